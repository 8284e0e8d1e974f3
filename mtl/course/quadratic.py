r"""A family of quadratic tasks where every meta-learning quantity has a closed form.

Task :math:`\tau` has curvature :math:`A_\tau` (symmetric positive definite, ``[d, d]``) and optimum
:math:`c_\tau` (``[d]``); its loss is :math:`L_\tau(\theta) = \tfrac12 (\theta-c_\tau)^\top A_\tau
(\theta-c_\tau)`. Gradient descent with step :math:`\alpha` for :math:`k` steps gives
:math:`\phi_\tau - c_\tau = P_\tau(\theta - c_\tau)` with :math:`P_\tau = (I-\alpha A_\tau)^k`, so

- the meta-objective is :math:`\mathbb E_\tau \tfrac12 (\theta-c_\tau)^\top P_\tau A_\tau P_\tau
  (\theta-c_\tau)`, its exact gradient :math:`\mathbb E_\tau P_\tau A_\tau P_\tau (\theta-c_\tau)`;
- first-order MAML drops the Jacobian :math:`P_\tau` in front: :math:`\mathbb E_\tau A_\tau P_\tau
  (\theta-c_\tau)`;
- Reptile moves :math:`\theta` along :math:`\mathbb E_\tau (\theta - \phi_\tau) = \mathbb E_\tau
  (I-P_\tau)(\theta-c_\tau)`.

Each of these is linear in :math:`\theta`, so each method's fixed point (``optimal_init``) is one
linear solve. A quadratic task is also a least-squares problem (``as_regression``): with
:math:`S_\tau = A_\tau^{1/2}`, :math:`L_\tau(\theta) = \tfrac12\lVert S_\tau\theta - S_\tau
c_\tau\rVert^2`, which lets lesson 01 run the very same ``mtl.adapt`` as the real models do.

All tensors are float64 (closed forms are compared with autodiff to ~1e-12).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "QuadraticTasks", "sample_tasks", "task_loss", "inner_trajectory", "adapted", "meta_objective",
    "meta_objective_grid", "meta_gradient", "optimal_init", "as_regression", "half_squared_error", "linear_model",
    "max_stable_lr", "METHODS",
]

#: method -> the matrix M_tau in "update direction = mean_tau M_tau (theta - c_tau)"
METHODS = ("average", "maml", "first_order", "reptile")


class QuadraticTasks(NamedTuple):
    """``curvature`` ``[n, d, d]`` (SPD) and ``optimum`` ``[n, d]``: ``n`` quadratic tasks."""

    curvature: Tensor
    optimum: Tensor

    def __len__(self) -> int:  # number of tasks
        return self.optimum.shape[0]


def sample_tasks(n: int, *, seed: int = 0, spread: float = 2.0, sharpness: float = 0.75) -> QuadraticTasks:
    """``n`` 2-D tasks where location and curvature are correlated (float64).

    Optima: ``c = (u, v)``, ``u ~ U[-spread, spread]``, ``v ~ N(0, 0.5^2)``. Curvature: eigenvalues
    ``(2 s, s / 2)`` with ``s = exp(-sharpness * u)`` (sharp tasks on the left, flat on the right),
    rotated by a uniform random angle. So the best *average* solution and the best *starting point
    for adaptation* differ: one inner step removes much of a sharp task's loss and little of a flat
    task's.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n}): ask for at least one task")
    g = torch.Generator().manual_seed(seed)
    u = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * spread
    v = torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    angle = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    scale = torch.exp(-sharpness * u)
    eig = torch.stack([2 * scale, scale / 2], dim=-1)  # [n, 2]
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1),
                       torch.stack([angle.sin(), angle.cos()], -1)], -2)  # [n, 2, 2]
    curvature = rot @ torch.diag_embed(eig) @ rot.transpose(-1, -2)
    return QuadraticTasks(curvature=(curvature + curvature.transpose(-1, -2)) / 2,
                          optimum=torch.stack([u, v], dim=-1))


def max_stable_lr(tasks: QuadraticTasks) -> float:
    """Largest inner step that does not diverge on any task: ``2 / max eigenvalue``."""
    return float(2 / torch.linalg.eigvalsh(tasks.curvature).max())


def task_loss(theta: Tensor, tasks: QuadraticTasks) -> Tensor:
    """``theta`` ``[d]`` or ``[n, d]`` (one point per task) -> losses ``[n]``."""
    diff = theta - tasks.optimum
    return 0.5 * torch.einsum("ni,nij,nj->n", diff, tasks.curvature, diff)


def _contraction(tasks: QuadraticTasks, lr: float, steps: int) -> Tensor:
    """``P = (I - lr A)^steps`` ``[n, d, d]``."""
    eye = torch.eye(tasks.optimum.shape[-1], dtype=tasks.curvature.dtype)
    return torch.linalg.matrix_power(eye - lr * tasks.curvature, steps)


def inner_trajectory(theta: Tensor, tasks: QuadraticTasks, lr: float, steps: int) -> Tensor:
    """Gradient-descent iterates from ``theta`` ``[d]`` on every task: ``[steps + 1, n, d]``."""
    point = theta.expand_as(tasks.optimum)
    points = [point]
    for _ in range(steps):
        point = point - lr * torch.einsum("nij,nj->ni", tasks.curvature, point - tasks.optimum)
        points.append(point)
    return torch.stack(points)


def adapted(theta: Tensor, tasks: QuadraticTasks, lr: float, steps: int) -> Tensor:
    """The adapted parameters ``phi_tau`` ``[n, d]`` after ``steps`` steps of size ``lr``."""
    return tasks.optimum + torch.einsum("nij,nj->ni", _contraction(tasks, lr, steps), theta - tasks.optimum)


def meta_objective(theta: Tensor, tasks: QuadraticTasks, lr: float, steps: int) -> Tensor:
    """Mean post-adaptation loss ``mean_tau L_tau(phi_tau(theta))`` (a scalar; differentiable)."""
    return task_loss(adapted(theta, tasks, lr, steps), tasks).mean()


def meta_objective_grid(points: Tensor, tasks: QuadraticTasks, lr: float, steps: int) -> Tensor:
    """``meta_objective`` at many points at once: ``points`` ``[p, d]`` -> ``[p]`` (for contour plots)."""
    p = _contraction(tasks, lr, steps)
    m = p @ tasks.curvature @ p  # [n, d, d]
    diff = points[:, None, :] - tasks.optimum  # [p, n, d]
    return 0.5 * torch.einsum("pni,nij,pnj->p", diff, m, diff) / len(tasks)


def _direction_matrix(tasks: QuadraticTasks, lr: float, steps: int, method: str) -> Tensor:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {METHODS}")
    a = tasks.curvature
    if method == "average":
        return a
    p = _contraction(tasks, lr, steps)
    if method == "maml":
        return p @ a @ p
    if method == "first_order":
        return a @ p
    return torch.eye(a.shape[-1], dtype=a.dtype) - p  # reptile: theta - phi


def meta_gradient(theta: Tensor, tasks: QuadraticTasks, lr: float, steps: int, method: str = "maml") -> Tensor:
    """The update direction ``[d]`` of ``method`` at ``theta`` (closed form, mean over tasks).

    ``"maml"``: the exact gradient of ``meta_objective``; ``"first_order"``: the gradient of the
    adapted loss evaluated at ``phi`` (FOMAML); ``"reptile"``: ``theta - phi`` (not scaled by 1/lr);
    ``"average"``: the gradient of the plain average loss (no adaptation).
    """
    m = _direction_matrix(tasks, lr, steps, method)
    return torch.einsum("nij,nj->i", m, theta - tasks.optimum) / len(tasks)


def optimal_init(tasks: QuadraticTasks, lr: float = 0.0, steps: int = 0, method: str = "maml") -> Tensor:
    """Where ``method``'s update direction vanishes: ``(mean M)^-1 mean(M c)`` ``[d]``.

    For ``"maml"`` this is the best initialisation for adaptation (the minimiser of
    ``meta_objective``); ``"average"`` is the best single solution for all tasks.
    """
    m = _direction_matrix(tasks, lr, steps, method)
    rhs = torch.einsum("nij,nj->i", m, tasks.optimum)
    return torch.linalg.solve(m.sum(0), rhs)


def as_regression(tasks: QuadraticTasks) -> tuple[Tensor, Tensor]:
    """Least-squares form of every task: ``x`` ``[n, d, d]`` (rows of ``A^{1/2}``), ``y`` ``[n, d, 1]``.

    With ``model = linear_model(d)`` and ``loss_fn = half_squared_error``,
    ``loss_fn(model(x[t]), y[t]) == task_loss(theta, tasks)[t]`` when ``model.weight == theta``.
    """
    eig, vec = torch.linalg.eigh(tasks.curvature)
    root = vec @ torch.diag_embed(eig.clamp_min(0).sqrt()) @ vec.transpose(-1, -2)
    return root, torch.einsum("nij,nj->ni", root, tasks.optimum).unsqueeze(-1)


def linear_model(d: int = 2) -> nn.Module:
    """``[m, d] -> [m, 1]`` without bias (its ``weight`` ``[1, d]`` is theta), float64."""
    return nn.Linear(d, 1, bias=False, dtype=torch.float64)


def half_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """``0.5 * sum((prediction - target)^2)``: the loss that makes ``as_regression`` exact."""
    return 0.5 * (prediction - target).pow(2).sum()
