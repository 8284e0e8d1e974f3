"""Meta-gradients computed without mtl, for the exactness tests: one task at a time with plain
autograd, and through the peer library ``higher``. Cross-entropy tasks, SGD inner steps of ``lr``."""
from __future__ import annotations

import higher
import torch
import torch.nn.functional as F
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
