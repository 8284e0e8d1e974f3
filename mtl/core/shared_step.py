"""The shared first inner step: step 0 of B tasks as one merged forward and backward.

At inner step 0 every task of a meta-batch starts from the same parameters, so its support
forward and backward can run once on the merged batch ``[B*n, ...]`` (batch norm still takes each
task's own statistics), and each task's gradient is split out of the merged backward by a rule per
layer kind. ``mtl.core.inner`` runs the later steps and the query pass per task
(``strategy="shared"`` and its variants); ``shared_step_refusal`` says why a model cannot take it.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.core.checks import LR, LossFn, Params, lr_of
from mtl.core.kernels import batch_norm_types, cpu_kernels
from mtl.core.norms import updates_running_stats

__all__ = ["shared_step_refusal", "shared_first_step"]


def shared_step_refusal(model: nn.Module) -> str | None:
    """Why ``strategy="shared"`` cannot run ``model`` (None when it can).

    The shared first step computes each task's gradient from one merged forward and backward
    with a rule per layer kind, so every module that holds parameters must be one of:
    ``nn.Conv1d/2d/3d`` (zero padding, numeric padding), ``nn.Linear``, ``mtl.models.BatchNorm``,
    ``nn.BatchNorm1d/2d/3d`` (batch statistics without running statistics, or eval mode with
    them). Modules without parameters must treat examples independently (ReLU, pooling,
    flatten, ...). Parameters must be used through their module's forward.
    """
    bn_types = batch_norm_types()
    for name, module in model.named_modules():
        label = f"{type(module).__name__} ({name or 'the model'})"
        if "forward" in module.__dict__:
            return f"{label} has a forward replaced on the instance"
        if isinstance(module, _BatchNorm) and module.training and module.track_running_stats \
                and module.running_mean is not None:
            return (f"{label} updates running statistics in training mode (the merged first step "
                    "would update them once for all tasks instead of once per task); use "
                    "track_running_stats=False, eval mode, or strategy='loop'")
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and updates_running_stats(module):
            return f"{label} updates running statistics in training mode"
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            return f"{label} draws random masks (the merged step would draw other ones than the loop)"
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if module.padding_mode != "zeros" or isinstance(module.padding, str) or module.transposed:
                return f"{label} uses padding {module.padding!r} / mode {module.padding_mode!r}"
        elif not isinstance(module, (nn.Linear, *bn_types)):
            return f"{label} holds parameters and has no per-task gradient rule"
    return None


def shared_first_step(model: nn.Module, params: Params, fixed: Params, sx: Tensor, sy: Tensor,
                      lr: LR, loss_fn: LossFn, first_order: bool,
                      channels_last: bool) -> tuple[dict[str, Tensor], Tensor]:
    """Inner step 0 of B tasks from the same ``params`` as one merged forward and backward.

    Returns ``(adapted, losses)``: name -> ``[B, *shape]`` (each task's parameters after one
    step, exactly as the per-task loop computes them) and the B step-0 inner losses.

    The merged batch ``[B*n, ...]`` runs the model once; batch norm takes its statistics per task
    (the merged batch viewed as ``[B, n, ...]``), so each task's activations are exactly its own.
    The merged loss is the *sum* of the B per-task losses, so the gradient of the merged loss
    with respect to a layer's output is, on task b's rows, the gradient of task b's loss. From
    those, one backward for all tasks, each task's parameter gradient follows by the layer's own
    rule on its rows (convolution: ``convolution_backward`` for the weight; linear: ``dY^T X``;
    batch-norm scale: ``sum dY * x_hat``; biases: ``sum dY``), all differentiable, so second
    order holds.
    """
    batch, n = sx.shape[:2]
    graph = not first_order and torch.is_grad_enabled() and any(
        p.requires_grad for p in params.values())
    at = params if graph else {k: p.detach().requires_grad_() for k, p in params.items()}
    names = {id(p): k for k, p in model.named_parameters()}  # canonical names (tied: the first)
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    bn_types = batch_norm_types()

    def conv_forward(self: nn.Module, x: Tensor) -> Tensor:
        y = self._conv_forward(x, self.weight, self.bias)
        if channels_last and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)
        calls.append(("conv", self, x, y))
        return y

    def linear_forward(self: nn.Module, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        calls.append(("linear", self, x, y))
        return y

    def norm_forward(self: nn.Module, x: Tensor) -> Tensor:
        channels = (1, -1) + (1,) * (x.dim() - 2)
        running = getattr(self, "running_mean", None)
        if isinstance(self, _BatchNorm):
            self._check_input_dim(x)
        if self.training or running is None:  # per-task batch statistics: tasks as channels
            rest = x.shape[1:]
            grouped = x.unflatten(0, (batch, n)).transpose(0, 1).reshape(n, batch * rest[0], *rest[1:])
            x_hat = F.batch_norm(grouped, None, None, None, None, True, 0.0, self.eps)
            x_hat = x_hat.reshape(n, batch, *rest).transpose(0, 1).reshape(batch * n, *rest)
        else:
            x_hat = (x - running.view(channels)) * torch.rsqrt(self.running_var.view(channels) + self.eps)
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        y = x_hat if weight is None else x_hat * weight.view(channels)
        y = y if bias is None else y + bias.view(channels)
        if weight is not None or bias is not None:
            calls.append(("norm", self, x_hat, y))
        return y

    patched = []
    for module in model.modules():
        forward = (conv_forward if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else
                   linear_forward if isinstance(module, nn.Linear) else
                   norm_forward if isinstance(module, bn_types) else None)
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            patched.append(module)
    try:
        with torch.enable_grad():
            with cpu_kernels(sx, model):
                out = functional_call(model, {**fixed, **at}, (sx.flatten(0, 1),))
            out = out.unflatten(0, (batch, n))
            losses = torch.stack([loss_fn(out[b], sy[b]) for b in range(batch)])
            wanted = [(kind, m, x, y) for kind, m, x, y in calls if y.requires_grad]
            grads_y = torch.autograd.grad(losses.sum(), [y for *_, y in wanted], create_graph=graph,
                                          allow_unused=True, materialize_grads=True)
            grads = _per_task_grads(wanted, grads_y, model, names, batch, n)
    finally:
        for module in patched:
            del module.forward
    adapted = {}
    for k, p in params.items():
        g = grads.get(k)
        if g is None:
            g = p.new_zeros((batch, *p.shape))
        elif not graph:
            g = g.detach()
        adapted[k] = p - lr_of(lr, k) * g
    return adapted, losses.detach()


def _per_task_grads(calls: list, grads_y: tuple, model: nn.Module, names: dict[int, str],
                    batch: int, n: int) -> dict[str, Tensor]:
    """name -> ``[B, *shape]``: each task's gradient from the layers' merged inputs and output grads."""
    out: dict[str, Tensor] = {}
    originals = {id(m): m for m in model.modules()}

    def add(module: nn.Module, attr: str, g: Tensor) -> None:
        original = originals[id(module)]._parameters.get(attr)
        name = names.get(id(original)) if original is not None else None
        if name is None:
            return
        out[name] = out[name] + g if name in out else g

    for (kind, module, x, _), dy in zip(calls, grads_y):
        rows = dy.unflatten(0, (batch, n))
        if kind == "conv":
            dims = x.dim() - 2
            weight = module.weight
            per_task = [torch.ops.aten.convolution_backward(
                dy[b * n:(b + 1) * n], x[b * n:(b + 1) * n], weight, None, list(module.stride),
                list(module.padding), list(module.dilation), False, [0] * dims, module.groups,
                (False, True, False))[1] for b in range(batch)]
            add(module, "weight", torch.stack(per_task))
            if module.bias is not None:
                add(module, "bias", rows.sum((1,) + tuple(range(3, rows.dim()))))
        elif kind == "linear":
            xs = x.reshape(batch, -1, x.shape[-1])
            ds = dy.reshape(batch, -1, dy.shape[-1])
            add(module, "weight", ds.transpose(1, 2) @ xs)
            if module.bias is not None:
                add(module, "bias", ds.sum(1))
        else:  # norm: y = x_hat * weight + bias, per channel (dim 1)
            reduce = (1,) + tuple(range(3, rows.dim()))
            if getattr(module, "weight", None) is not None:
                add(module, "weight", (rows * x.unflatten(0, (batch, n))).sum(reduce))
            if getattr(module, "bias", None) is not None:
                add(module, "bias", rows.sum(reduce))
    return out
