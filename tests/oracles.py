"""What the exactness tests compare against, written without mtl: meta-gradients one task at a time
with plain autograd and through the peer library ``higher`` (cross-entropy tasks, SGD inner steps
of ``lr``), and the random statistics their models start from."""
from __future__ import annotations

import higher
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def per_task_loop(model, params, sx, sy, qx, qy, steps, first_order, lr):
    """``(mean query loss, its gradient w.r.t. params)``: each task adapted and scored on its own."""
    total = 0.0
    for b in range(sx.shape[0]):
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (sx[b],)), sy[b])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: w - lr * g for (n, w), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (qx[b],)), qy[b])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, list(params.values()))


def higher_meta_gradient(model, sx, sy, qx, qy, steps, first_order, lr):
    """The peer library's meta-gradient (first order: its inner gradients detached)."""
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    callback = (lambda grads: [g.detach() for g in grads]) if first_order else None
    for b in range(sx.shape[0]):
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(sx[b]), sy[b]), grad_callback=callback)
            (F.cross_entropy(fmodel(qx[b]), qy[b]) / sx.shape[0]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def randomise_stats(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine values (seeded), so eval mode is a real test."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and \
                getattr(m, "weight", None) is not None:
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model


def random_tasks(shape, *, tasks: int, ways: int, shots: int, queries: int, seed: int):
    """A seeded float64 batch ``(support_x, support_y, query_x, query_y)`` of ``tasks`` N-way tasks."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, *shape, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, ways * queries, *shape, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return sx, sy, qx, qy
