"""A faster CPU max-pool for the inner loop's forward passes: the same numbers in less time.

Torch's max-pool of a contiguous (NCHW) tensor is one of the costliest kernels of a Conv4
meta-step on a CPU, and torch's channels-last kernel finds the same window maxima up to about
3x faster (torch 2.14, measured in ``benchmarks/README.md``). ``max_pool2d`` locates them there (no
gradient), then gathers the output from the input at those positions. The result and its first
and second derivatives are the plain kernel's (a gather; its derivative is a scatter into the
input, whose derivative is a gather again), only cheaper.

``cpu_kernels(x, model)`` is a context within which every ``nn.MaxPool2d`` of ``model`` takes
this path for an input of at least ``MIN_ELEMENTS`` elements (below that, torch's own kernel is
faster); a tensor that is not on a CPU or is under a ``torch.func`` transform, and any other
call, run torch's own. The pools' ``forward`` is replaced on the instances for the block (a
function mode would add a Python call to every operation of the forward). The inner loop
(``mtl.core.inner``) enters it around its forward passes unless ``enabled(False)`` or the
environment variable ``MTL_CPU_KERNELS=0``.

Batch norm is left to torch's fused kernels: written out as elementwise operations its double
backward costs fewer floating-point operations but, measured end to end, second-order meta-steps
came out up to 34% slower on 2 cores and 6-10% slower on one (``benchmarks/README.md``).
"""
from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.core.norms import is_transformed

__all__ = ["cpu_kernels", "enabled", "max_pool2d", "batch_norm_types"]

_ON = [os.environ.get("MTL_CPU_KERNELS", "1") != "0"]
#: smaller inputs pool faster in torch's own kernel (the layout copy and the gather cost more
#: than they save there; measured in benchmarks/README.md).
MIN_ELEMENTS = 2 ** 17


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


def _pool_forward(self: nn.MaxPool2d, x: Tensor) -> Tensor:
    """``nn.MaxPool2d.forward`` through ``max_pool2d`` where it applies, torch's own elsewhere."""
    if _ON[0] and _plain(x) and x.dim() == 4 and x.is_contiguous() and x.numel() >= MIN_ELEMENTS:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode, self.return_indices)
    return nn.MaxPool2d.forward(self, x)


def batch_norm_types() -> tuple[type, ...]:
    """The batch-norm layer classes: ``mtl.models.BatchNorm`` and torch's ``_BatchNorm`` (1d/2d/3d)."""
    from mtl.models import BatchNorm  # mtl.models imports mtl.core.norms only: no cycle

    return (BatchNorm, _BatchNorm)


@contextlib.contextmanager
def cpu_kernels(x: Tensor, model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.MaxPool2d`` of ``model`` pools through ``max_pool2d`` where
    ``x`` (the forward's input) is on a CPU (a pool whose forward is already replaced, by an
    enclosing block or by its owner, is left as it is). On leaving, each pool gets its own
    forward back (a copy of the model made inside the block keeps the replacement)."""
    pools = [m for m in model.modules() if type(m) is nn.MaxPool2d and "forward" not in m.__dict__] \
        if _ON[0] and _plain(x) else []
    replaced = []
    try:
        for pool in pools:
            pool.forward = types.MethodType(_pool_forward, pool)
            replaced.append(pool)
        yield
    finally:
        for pool in replaced:
            current = pool.__dict__.get("forward")
            if getattr(current, "__func__", None) is _pool_forward:
                del pool.forward
