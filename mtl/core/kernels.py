"""A faster CPU max-pool for the inner loop's forward passes: the same numbers in less time.

Torch's max-pool of a contiguous (NCHW) tensor is one of the costliest kernels of a Conv4
meta-step on a CPU, and torch's channels-last kernel finds the same window maxima many times
faster (torch 2.14, measured in ``benchmarks/README.md``). ``max_pool2d`` locates them there (no
gradient), then gathers the output from the input at those positions. The result and its first
and second derivatives are the plain kernel's (a gather; its derivative is a scatter into the
input, whose derivative is a gather again), only cheaper.

``cpu_kernels(x, model)`` is a context within which ``F.max_pool2d`` (so ``nn.MaxPool2d``)
takes this path; any other call, a tensor that is not on a CPU, and a tensor under a
``torch.func`` transform run torch's own. A model without a max-pool module gets no context at
all (its every operation would pay the dispatch for nothing). The inner loop
(``mtl.core.inner``) enters it around its forward passes unless ``enabled(False)`` or the
environment variable ``MTL_CPU_KERNELS=0``.

Batch norm is left to torch's fused kernels: written out as elementwise operations its double
backward costs fewer floating-point operations but, measured end to end, second-order meta-steps
came out 1-25% slower on 2 cores and 6-9% slower on one (``benchmarks/README.md``).
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

__all__ = ["cpu_kernels", "enabled", "max_pool2d", "batch_norm_types"]

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


def _plain(x: object) -> bool:
    return (isinstance(x, Tensor) and x.device.type == "cpu" and x.is_floating_point()
            and not is_transformed(x))


class _Kernels(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d and args and _plain(args[0]) and args[0].dim() == 4 \
                and args[0].is_contiguous():
            return max_pool2d(*args, **kwargs)
        return func(*args, **kwargs)


def batch_norm_types() -> tuple[type, ...]:
    """The batch-norm layer classes: ``mtl.models.BatchNorm`` and torch's ``_BatchNorm`` (1d/2d/3d)."""
    from mtl.models import BatchNorm  # mtl.models imports mtl.core.norms only: no cycle

    return (BatchNorm, _BatchNorm)


def _served(model: nn.Module) -> bool:
    """Whether ``model`` has a module whose forward this module's kernel can take."""
    return any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@contextlib.contextmanager
def cpu_kernels(x: Tensor, model: nn.Module) -> Iterator[None]:
    """Within the block, the faster max-pool of this module where ``x`` (the forward's input) is
    on a CPU and ``model`` has a max-pool module."""
    if not _ON[0] or not _plain(x) or not _served(model):
        yield
        return
    with _Kernels():
        yield
