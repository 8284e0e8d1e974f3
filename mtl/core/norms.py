"""Batch, instance and layer norm that stay exact under ``torch.func`` transforms, for any model.

torch's fused batch-norm and layer-norm kernels with an affine ``weight`` get the *second*
derivative wrong when they run under ``vmap`` (torch 2.14; ``docs/torch-batchnorm-vmap.md`` has the reproduction and
``tests/test_norms.py`` reports when a release fixes it), and second-order MAML needs exactly that
derivative. A layer that updates running statistics in place cannot run under ``grad`` at all.

``exact_norms(model)`` makes every ``nn.BatchNorm1d/2d/3d``, ``nn.InstanceNorm1d/2d/3d`` and
``nn.LayerNorm`` of ``model`` compute through ``batch_norm`` / ``instance_norm`` / ``layer_norm``
below while the block runs (``mtl.models.BatchNorm`` always does). These are the same numbers as
torch's layers, with the normalisation left to the fused kernel *without* affine (exact under
``vmap``) or written out, and the affine written out. On plain tensors (the per-task loop) they
call torch's own kernel unchanged. ``GroupNorm`` is exact under ``vmap`` as it is and is left alone.

Running statistics under ``vmap``: read (eval mode), never updated (training mode). The tasks of
a meta-batch each have their own batch statistics, and a module has one buffer; the per-task loop
updates it once per forward, as plain PyTorch does. ``strategy="auto"`` therefore keeps the loop
for a model with such layers in training mode, so its buffers evolve exactly as without ``mtl``.
"""
from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["exact_norms", "batch_norm", "instance_norm", "is_transformed", "updates_running_stats"]


def is_transformed(x: Tensor) -> bool:
    """True when ``x`` is a tensor seen inside a ``torch.func`` transform (vmap, grad, ...)."""
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return True if check is None else bool(check(x))  # unknown torch: take the exact path


def _affine(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        x = x * weight.view(shape)
    if bias is not None:
        x = x + bias.view(shape)
    return x


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, *, training: bool, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """``F.batch_norm`` (``[n, C, ...] -> [n, C, ...]``), exact under ``torch.func`` transforms.

    Under a transform, ``training=True`` normalises with the batch's statistics and leaves the
    running statistics as they are; ``training=False`` uses the running statistics.
    """
    if not is_transformed(x):
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if training or running_mean is None:
        x = F.batch_norm(x, None, None, None, None, True, 0.0, eps)
    else:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - running_mean.view(shape)) * torch.rsqrt(running_var.view(shape) + eps)
    return _affine(x, weight, bias)


def instance_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                  weight: Tensor | None, bias: Tensor | None, *, use_input_stats: bool,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``F.instance_norm`` (``[n, C, ...]``, each sample and channel on its own), exact under transforms."""
    if not is_transformed(x):
        return F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats,
                               momentum, eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if use_input_stats or running_mean is None:
        dims = tuple(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + eps)
    else:
        x = (x - running_mean.view(shape)) * torch.rsqrt(running_var.view(shape) + eps)
    return _affine(x, weight, bias)


# ----------------------------------------------------------------------------- the layers

def layer_norm(x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None,
               bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm`` over the last ``len(normalized_shape)`` dims, exact under transforms."""
    if not is_transformed(x):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    x = F.layer_norm(x, normalized_shape, None, None, eps)
    if weight is not None:
        x = x * weight
    if bias is not None:
        x = x + bias
    return x


def _layer_norm_forward(self: nn.LayerNorm, x: Tensor) -> Tensor:
    if not is_transformed(x):
        return type(self).forward(self, x)
    return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def _batch_norm_forward(self: _BatchNorm, x: Tensor) -> Tensor:
    """``_BatchNorm.forward`` through ``batch_norm`` (torch's own forward on plain tensors)."""
    if not is_transformed(x):
        return type(self).forward(self, x)
    self._check_input_dim(x)
    use_batch = self.training or (self.running_mean is None and self.running_var is None)
    if use_batch and self.track_running_stats and self.running_mean is not None:
        _warn_frozen_stats(self)
    return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                      training=use_batch, eps=self.eps)


def _instance_norm_forward(self: _InstanceNorm, x: Tensor) -> Tensor:
    if not is_transformed(x):
        return type(self).forward(self, x)
    use_input = self.training or not self.track_running_stats
    if use_input and self.track_running_stats:
        _warn_frozen_stats(self)
    unbatched = x.dim() == self._get_no_batch_dim()  # [C, ...]: one sample without a batch dim
    out = instance_norm(x[None] if unbatched else x, self.running_mean, self.running_var,
                        self.weight, self.bias, use_input_stats=use_input, eps=self.eps)
    return out[0] if unbatched else out


_FORWARDS = ((_BatchNorm, _batch_norm_forward), (_InstanceNorm, _instance_norm_forward),
             (nn.LayerNorm, _layer_norm_forward))
_WARNED: set[int] = set()


def _warn_frozen_stats(module: nn.Module) -> None:
    if id(module) in _WARNED:
        return
    _WARNED.add(id(module))
    warnings.warn(f"{type(module).__name__} keeps running statistics, which strategy='vmap' does "
                  "not update (each task has its own batch statistics); the meta-gradient is "
                  "exact. Use strategy='loop' to update them as plain PyTorch does, or "
                  "put the model in eval mode to normalise with them.", stacklevel=3)


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch, instance and layer norm layers of ``model`` that ``exact_norms`` reroutes."""
    return [m for m in model.modules() if isinstance(m, tuple(cls for cls, _ in _FORWARDS))]


def updates_running_stats(model: nn.Module) -> bool:
    """True if a forward of ``model`` (in its current mode) would update running statistics."""
    return any(m.training and getattr(m, "track_running_stats", False)
               and m.running_mean is not None for m in norm_layers(model))


@contextlib.contextmanager
def exact_norms(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s batch, instance and layer norm layers are exact under transforms.

    Re-entrant; the layers get their class's forward back on exit. Layers whose ``forward`` the
    user replaced on the instance are left as they are.
    """
    installed = []
    for module in norm_layers(model):
        if "forward" in module.__dict__:
            continue  # already rerouted by an enclosing block (or replaced by the user)
        for cls, forward in _FORWARDS:
            if isinstance(module, cls):
                module.forward = types.MethodType(forward, module)
                installed.append(module)
                break
    try:
        yield model
    finally:
        for module in installed:
            del module.forward
