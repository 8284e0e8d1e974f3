"""ResNet-12: shapes, widths, functional_call, eval-mode batch norm."""
import pytest
import torch
from torch.func import functional_call

from mtl.models.resnet import DEFAULT_CHANNELS, ResNet12, widths_for


def test_shapes_and_feature_dim():
    model = ResNet12(3, 7, hidden=4)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.features(x).shape == (2, model.feature_dim) == (2, 40)
    assert ResNet12(1, 5, channels=(2, 3, 4, 5))(torch.rand(3, 1, 28, 28)).shape == (3, 5)


def test_widths_follow_metaoptnet():
    assert widths_for(64) == DEFAULT_CHANNELS
    assert ResNet12().config["channels"] == list(DEFAULT_CHANNELS)
    with pytest.raises(ValueError, match="four positive"):
        ResNet12(channels=(8, 16, 32))


def test_functional_call_replaces_weights_and_supplies_conv_bias():
    torch.manual_seed(0)
    model = ResNet12(1, 5, hidden=2).eval()
    x = torch.rand(4, 1, 16, 16)
    params = dict(model.encoder.named_parameters())
    same = functional_call(model.encoder, params, (x,))
    torch.testing.assert_close(same, model.features(x))
    # a conv registered with bias=None still accepts a bias through functional_call
    shifted = functional_call(model.encoder, {"0.conv1.bias": torch.ones(2)}, (x,))
    assert not torch.allclose(shifted, same)


def test_eval_features_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = ResNet12(1, 5, hidden=2)
    model.train()
    model(torch.rand(8, 1, 16, 16))  # running statistics move away from their init
    model.eval()
    x = torch.rand(6, 1, 16, 16)
    torch.testing.assert_close(model.features(x[:2]), model.features(x)[:2])
