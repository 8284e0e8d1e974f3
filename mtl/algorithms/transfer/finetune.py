"""Baselines on a pre-trained backbone, no meta-training: what meta-transfer learning must beat.

All four take the same pre-trained network (``mtl.algorithms.transfer.pretrain``) and answer ``predict(batch)`` on the
same evaluation episodes as every algorithm (``mtl.engine.evaluate``); ``meta_gradient`` refuses, since
there is nothing to meta-train. The backbone runs in eval mode (batch norm with its pre-training
running statistics) and is never modified: ``FineTuneAll`` adapts per-task copies of its weights.

- ``FineTuneHead``: a new linear classifier (init 0) trained by ``inner_steps`` SGD steps of size
  ``inner_lr`` on the support features ("FT the FC layer" of the MTL paper).
- ``FineTuneAll``: the same, but every weight of the network is fine-tuned too ("FT all layers").
- ``LinearProbe``: L2-regularised logistic regression on L2-normalised features, solved by L-BFGS
  (as scikit-learn's ``LogisticRegression(C=1)`` in Tian et al. 2020, "Rethinking few-shot").
- ``NearestCentroid``: the class means of the L2-normalised support features; logits are minus
  the squared distances to them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mtl.algorithms.base import Learner
from mtl.algorithms.transfer.meta_transfer import _ways_of, encoder_of, freeze_to_buffers, pretrained_from_config
from mtl.errors import ConfigError, InnerLoopError, MTLError
from mtl.core.heads import adapt_linear_head, linear_logits, prototype_logits
from mtl.core.inner import adapt


class _PretrainedBaseline(Learner):
    """A frozen copy of ``model``'s encoder (buffers, eval mode) and the common interface."""

    def __init__(self, model: nn.Module, *, inner_steps: int = 100, inner_lr: float = 0.01,
                 ways: int | None = None):
        super().__init__()
        self.encoder = freeze_to_buffers(encoder_of(model))
        self.ways = ways if ways is not None else _ways_of(model)
        self.inner_steps, self.inner_lr = int(inner_steps), float(inner_lr)

    CONFIG_SETTINGS = ("pretrained",)

    @classmethod
    def from_config(cls, config, build_model):
        """The network of ``--set pretrained=PATH`` (nothing is trained: iterations 0); a run
        setting ``--first-order`` or ``--strategy``, which a baseline does not use, is refused."""
        if config.first_order or config.strategy != "auto":
            raise ConfigError(f"--algorithm {config.algorithm} fine-tunes with plain first-order steps, one "
                              "task at a time: drop --first-order and --strategy")
        backbone, extra = pretrained_from_config(config, build_model)
        return cls(backbone, inner_steps=config.inner_steps, inner_lr=config.inner_lr, ways=config.test_ways,
                   **extra)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    def meta_gradient(self, batch) -> dict[str, float]:
        raise MTLError(f"{type(self).__name__} is a baseline with nothing to meta-train: evaluate it "
                       "directly on a pre-trained backbone (`python -m mtl evaluate`, or .predict)")

    @torch.no_grad()
    def _features(self, x: Tensor) -> Tensor:
        """``[B, M, C, H, W]`` -> ``[B, M, D]`` (frozen network)."""
        return self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def _ways(self, batch) -> int:
        return self.ways or int(batch.support_y.max()) + 1

    def per_task_parameters(self, ways: int) -> int:
        """An ``N x D`` linear classifier and its bias, fitted to each task."""
        dim = [m for m in self.encoder.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        return ways * dim + ways  # ResNet-12: global average pooling after the last block

    def set_ways(self, ways: int) -> None:
        self.ways = ways


class FineTuneHead(_PretrainedBaseline):
    """Train a zero-initialised linear head on the frozen features of each task's support set."""

    @torch.no_grad()
    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        support, query = self._features(batch.support_x), self._features(batch.query_x)
        b, _, d = support.shape
        weight = support.new_zeros(b, self._ways(batch), d).requires_grad_()
        bias = support.new_zeros(b, self._ways(batch)).requires_grad_()
        with torch.enable_grad():
            weight, bias = adapt_linear_head(support, batch.support_y, weight, bias, steps=steps,
                                             lr=self.inner_lr, create_graph=False)
        return linear_logits(query, weight.detach(), bias.detach())


class FineTuneAll(_PretrainedBaseline):
    """Fine-tune every weight of the network and a zero-initialised head, one task at a time
    (``mtl.core.inner.adapt``, first order: nothing is meta-trained)."""

    @torch.no_grad()
    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        network = _EncoderWithHead(self.encoder, self._feature_dim(batch.support_x[0]), self._ways(batch))
        weights = {f"encoder.{name}": w for name, w in self.encoder.named_buffers()
                   if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        start = {**weights, **{f"head.{n}": p.detach() for n, p in network.head.named_parameters()}}
        out = []
        for sx, sy, qx in zip(batch.support_x, batch.support_y, batch.query_x):
            try:
                adapted = adapt(network, start, sx, sy, steps=steps, lr=self.inner_lr, first_order=True)
            except InnerLoopError as exc:
                raise self._diverged() from exc
            out.append(functional_call(network, adapted, (qx,)))
        logits = torch.stack(out)
        if not torch.isfinite(logits).all():
            raise self._diverged()
        return logits

    def _diverged(self) -> InnerLoopError:
        return InnerLoopError(f"fine-tuning all layers diverged (NaN/Inf) at inner_lr={self.inner_lr}; "
                              "lower inner_lr (around 0.01 for a ResNet-12) or take fewer steps")

    def _feature_dim(self, x: Tensor) -> int:
        if not hasattr(self, "_dim"):
            self._dim = self.encoder(x[:1]).shape[-1]
        return self._dim

    def per_task_parameters(self, ways: int) -> int:
        """The head and every weight of the network."""
        weights = sum(b.numel() for n, b in self.encoder.named_buffers()
                      if not n.endswith(("running_mean", "running_var", "num_batches_tracked")))
        return super().per_task_parameters(ways) + weights


class _EncoderWithHead(nn.Module):
    """``encoder`` (frozen, eval mode) followed by a zero-initialised ``head``: ``[n, ...] -> [n, ways]``."""

    def __init__(self, encoder: nn.Module, dim: int, ways: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, ways).to(next(iter(encoder.buffers())).device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


class LinearProbe(_PretrainedBaseline):
    """Logistic regression (L2 penalty ``0.5 ||W||^2 / C``) on L2-normalised frozen features, L-BFGS."""

    def __init__(self, model: nn.Module, *, C: float = 1.0, **kwargs):
        super().__init__(model, **kwargs)
        self.C = float(C)

    @torch.no_grad()
    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        support = F.normalize(self._features(batch.support_x), dim=-1)
        query = F.normalize(self._features(batch.query_x), dim=-1)
        b, m, d = support.shape
        weight = support.new_zeros(b, self._ways(batch), d, requires_grad=True)
        bias = support.new_zeros(b, self._ways(batch), requires_grad=True)
        if steps > 0:
            optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

            def closure():
                optimizer.zero_grad()
                logits = linear_logits(support, weight, bias)
                # the tasks' problems are independent: their sum is minimised by each task's optimum
                loss = F.cross_entropy(logits.flatten(0, 1), batch.support_y.flatten(), reduction="sum")
                loss = loss + 0.5 / self.C * weight.pow(2).sum()
                loss.backward()
                return loss

            with torch.enable_grad():
                optimizer.step(closure)
        return linear_logits(query, weight.detach(), bias.detach())


class NearestCentroid(_PretrainedBaseline):
    """Minus the squared distance of L2-normalised query features to the support class means."""

    @torch.no_grad()
    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        support = F.normalize(self._features(batch.support_x), dim=-1)
        query = F.normalize(self._features(batch.query_x), dim=-1)
        return prototype_logits(support, batch.support_y, query, self._ways(batch))

    def per_task_parameters(self, ways: int) -> int:
        """None: the class means are computed, not learned."""
        return 0
