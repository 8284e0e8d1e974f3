"""Faster CPU kernels for the inner loop's forward passes: the same numbers in less time.

Two of torch's CPU kernels dominate a Conv4 meta-step and have faster exact equivalents
(torch 2.14, measured in ``benchmarks/README.md``):

- **max-pool** of a contiguous (NCHW) tensor: torch's channels-last kernel finds the same window
  maxima many times faster. ``max_pool2d`` locates them there (no gradient), then gathers the
  output from the input at those positions. The result and its first and second derivatives are
  the plain kernel's (a gather; its derivative is a scatter into the input, whose derivative is a
  gather again), only cheaper.
- **batch norm** with batch statistics, differentiated twice (second-order MAML's inner steps):
  the fused kernel's double backward is a long chain of small operations; written out,
  ``x * s + (b - mean * s)`` with ``s = weight / sqrt(var + eps)``, it differentiates twice
  faster, equal to rounding. Differentiated once, the fused kernel is faster and is kept.

``cpu_kernels(x, model, double_backward=...)`` is a context within which ``F.max_pool2d`` (so
``nn.MaxPool2d``) and, with ``double_backward=True``, ``F.batch_norm`` in training mode without
running statistics (``nn.BatchNorm2d(track_running_stats=False)``, ``mtl.models.BatchNorm``)
take these paths; any other call, a tensor that is not on a CPU, and a tensor under a
``torch.func`` transform run torch's own. A model without a max-pool or batch-norm module gets
no context at all (its every operation would pay the dispatch for nothing). The inner loop
(``mtl.core.inner``) enters it around its forward passes unless ``enabled(False)`` or the
environment variable ``MTL_CPU_KERNELS=0``.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from mtl.core.norms import is_transformed

__all__ = ["cpu_kernels", "enabled", "max_pool2d", "batch_norm", "batch_norm_types"]

_ON = [os.environ.get("MTL_CPU_KERNELS", "1") != "0"]


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Within the block ``cpu_kernels`` does nothing unless ``on`` (torch's own kernels throughout)."""
    before = _ON[0]
    _ON[0] = on
    try:
        yield
    finally:
        _ON[0] = before


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """``F.max_pool2d`` of ``x [n, C, H, W]``: maxima found in channels-last, output gathered."""
    with torch.no_grad():
        _, index = F.max_pool2d(x.detach().contiguous(memory_format=torch.channels_last),
                                kernel_size, stride, padding, dilation, ceil_mode, True)
    index = index.contiguous()
    out = x.flatten(2).gather(2, index.flatten(2)).view(index.shape)
    return (out, index) if return_indices else out


def batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Batch norm of ``x [n, C, ...]`` with its own statistics, written out (``[n, C, ...]``)."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.view(shape)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.view(shape)
    return x * scale + shift


def _plain(x: object) -> bool:
    return (isinstance(x, Tensor) and x.device.type == "cpu" and x.is_floating_point()
            and not is_transformed(x))


class _Kernels(TorchFunctionMode):
    def __init__(self, double_backward: bool):
        super().__init__()
        self.double_backward = double_backward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d and args and _plain(args[0]) and args[0].dim() == 4 \
                and args[0].is_contiguous():
            return max_pool2d(*args, **kwargs)
        if func is F.batch_norm and self.double_backward:
            bound = _batch_norm_args(*args, **kwargs)
            if bound is not None:
                return batch_norm(*bound)
        return func(*args, **kwargs)


def _batch_norm_args(input, running_mean, running_var, weight=None, bias=None, training=False,
                     momentum=0.1, eps=1e-5) -> tuple | None:
    """``(x, weight, bias, eps)`` where ``F.batch_norm``'s call uses batch statistics only."""
    if training and running_mean is None and running_var is None and _plain(input) \
            and input.dim() >= 2:
        return input, weight, bias, eps
    return None


def batch_norm_types() -> tuple[type, ...]:
    """The batch-norm layer classes: ``mtl.models.BatchNorm`` and torch's ``_BatchNorm`` (1d/2d/3d)."""
    from mtl.models import BatchNorm  # mtl.models imports mtl.core.norms only: no cycle

    return (BatchNorm, _BatchNorm)


def _served(model: nn.Module, double_backward: bool) -> bool:
    """Whether ``model`` has a module whose forward this module's kernels can take."""
    norms = batch_norm_types() if double_backward else ()
    return any(isinstance(m, (nn.MaxPool2d, *norms)) for m in model.modules())


@contextlib.contextmanager
def cpu_kernels(x: Tensor, model: nn.Module, *, double_backward: bool = False) -> Iterator[None]:
    """Within the block, the faster kernels of this module where ``x`` (the forward's input) is on
    a CPU and ``model`` has a max-pool or batch-norm module; ``double_backward``: the forward will
    be differentiated twice (batch norm written out)."""
    if not _ON[0] or not _plain(x) or not _served(model, double_backward):
        yield
        return
    with _Kernels(double_backward):
        yield
