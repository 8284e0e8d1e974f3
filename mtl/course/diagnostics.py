"""How far first-order MAML's meta-gradient is from MAML's, and why (lesson 04).

First-order MAML differentiates the query loss at the adapted weights and drops the inner loop's
Jacobian. With one inner step of size ``lr`` on a support loss with Hessian ``H``, that Jacobian is
``I - lr * H``: MAML's meta-gradient is ``(I - lr H) g`` where first-order MAML's is ``g`` (``g``
the query gradient at the adapted weights). The two agree when ``lr * H`` is small, and the more
``lr`` times the largest curvature exceeds 1, the more the dropped factor turns directions around::

    agreement = first_order_agreement(model, batch, steps=1, lr=0.4)   # {"all": cos, "head": cos, ...}
    curvature = head_curvature(model, batch.support_x[0], batch.support_y[0])   # lambda_max, a float
    print(0.4 * curvature)   # above 1: the dropped Jacobian has a negative eigenvalue
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from mtl.core.inner import maml_loss
from mtl.data import TaskBatch
from mtl.errors import MTLError

__all__ = ["meta_gradients", "first_order_agreement", "head_curvature"]


def meta_gradients(model: nn.Module, batch: TaskBatch, *, steps: int, lr: float,
                   loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """MAML's meta-gradient and first-order MAML's on one batch of tasks, as ``(exact,
    first_order)``: two dicts parameter name -> gradient (the parameters' shapes), both of the mean
    query loss after ``steps`` inner steps of size ``lr``. The model's ``.grad`` is left alone."""
    params = dict(model.named_parameters())
    found = {}
    for first_order in (False, True):
        loss = maml_loss(model, params, *batch, steps=steps, lr=lr, loss_fn=loss_fn, first_order=first_order)
        found[first_order] = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    return found[False], found[True]


def _flat(grads: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([grads[n].flatten() for n in names])


def _cosine(a: dict[str, Tensor], b: dict[str, Tensor], names: list[str]) -> float:
    x, y = _flat(a, names), _flat(b, names)
    return float(x @ y / (x.norm() * y.norm()))


def first_order_agreement(model: nn.Module, batch: TaskBatch, *, steps: int, lr: float, head: str = "head",
                          loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> dict[str, float]:
    """How well first-order MAML's meta-gradient points along MAML's on ``batch``: the cosine of
    the angle between them over all parameters (``all``), over the parameters whose names start
    with ``head`` (``head``) and over the others (``body``), and the ratio of their lengths
    (``length``: first order over exact). A cosine of 1 is the same direction, 0 a right angle,
    below 0 a first-order step that, to first order, raises MAML's objective."""
    exact, first = meta_gradients(model, batch, steps=steps, lr=lr, loss_fn=loss_fn)
    names = list(exact)
    head_names = [n for n in names if n.startswith(head + ".")]
    body_names = [n for n in names if n not in head_names]
    if not head_names or not body_names:
        raise MTLError(f"no parameter name starts with {head + '.'!r} or every one does: "
                       f"pass the prefix of the model's last layer as head= (names: {names})")
    length = _flat(first, names).norm() / _flat(exact, names).norm()
    return {"all": _cosine(first, exact, names), "body": _cosine(first, exact, body_names),
            "head": _cosine(first, exact, head_names), "length": float(length)}


def head_curvature(model: nn.Module, support_x: Tensor, support_y: Tensor, *, head: str = "head",
                   loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> float:
    """The largest eigenvalue of the Hessian of one task's support loss with respect to the
    parameters whose names start with ``head`` (all of them together, the rest held fixed), at the
    model's current weights. ``support_x``: ``[n, *image]``, ``support_y``: ``[n]``. One inner step
    of size ``lr`` multiplies the meta-gradient's component along that eigenvector by
    ``1 - lr * lambda_max``, which first-order MAML replaces by 1."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # batch norm's running statistics stay put
    head_names = [n for n in params if n.startswith(head + ".")]
    if not head_names:
        raise MTLError(f"no parameter name starts with {head + '.'!r}: pass the prefix of the model's last "
                         f"layer as head= (names: {list(params)})")
    sizes = [params[n].numel() for n in head_names]

    # the buffers are an input, not a captured tensor, so that batch norm in training mode may update them
    def support_loss(flat: Tensor, buffers: dict[str, Tensor]) -> Tensor:
        pieces = dict(zip(head_names, (p.view_as(params[n]) for n, p in zip(head_names, flat.split(sizes)))))
        return loss_fn(functional_call(model, ({**params, **pieces}, buffers), (support_x,)), support_y)

    flat = torch.cat([params[n].flatten() for n in head_names])
    return float(torch.linalg.eigvalsh(jacrev(jacrev(support_loss))(flat, buffers))[-1])
