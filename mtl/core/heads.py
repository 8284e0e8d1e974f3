"""Heads that every task fits anew, batched over tasks: linear classifiers and class prototypes.

- ``linear_logits``: a per-task linear classifier on features;
- ``adapt_linear_head``: gradient steps on it, all tasks at once (meta-transfer learning's inner
  loop, the fine-tune-head baseline);
- ``prototype_logits``: minus the squared distance to each class's mean support feature (ProtoNet,
  nearest centroid, the pre-training validation);
- ``prototype_head``: the same prototypes as a linear head, ``W = 2c``, ``b = -||c||^2`` (Proto-MAML's
  initialisation): ``-||x - c||^2 = 2c.x - ||c||^2 - ||x||^2``, and softmax ignores ``-||x||^2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_logits", "adapt_linear_head", "prototype_logits", "prototype_head"]


def linear_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``[B, M, D]`` x head ``[B, N, D]``, ``[B, N]`` -> logits ``[B, M, N]``."""
    return torch.einsum("bmd,bnd->bmn", features, weight) + bias[:, None, :]


def adapt_linear_head(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, *, steps: int,
                      lr: float, create_graph: bool) -> tuple[Tensor, Tensor]:
    """Gradient steps on a per-task linear classifier, all tasks at once.

    Args:
        features: ``[B, M, D]`` support features; labels: ``[B, M]`` in 0..N-1.
        weight, bias: initial head ``[B, N, D]``, ``[B, N]`` (e.g. an expanded meta-learned init).
        create_graph: keep the graph of the steps (second-order meta-gradient).
    Returns:
        the adapted ``weight [B, N, D]``, ``bias [B, N]``. The tasks' losses are summed, so the
        gradient with respect to task b's head is task b's own.
    """
    m = features.shape[1]
    for _ in range(steps):
        logits = linear_logits(features, weight, bias)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / m
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias), create_graph=create_graph)
        weight, bias = weight - lr * grad_w, bias - lr * grad_b
    return weight, bias


def prototypes(support: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """``support [B, n_s, D]``, ``support_y [B, n_s]`` -> each class's mean support feature ``[B, N, D]``."""
    one_hot = F.one_hot(support_y, ways).to(support.dtype)  # [B, n_s, N]
    return one_hot.transpose(1, 2) @ support / one_hot.sum(1).unsqueeze(-1)


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """``support [B, n_s, D]``, ``support_y [B, n_s]``, ``query [B, n_q, D]`` -> ``[B, n_q, ways]``:
    minus the squared Euclidean distance of each query to each class's mean support feature."""
    return -torch.cdist(query, prototypes(support, support_y, ways)).pow(2)


def prototype_head(support: Tensor, support_y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """The prototypes as a linear head: ``weight = 2c [B, N, D]``, ``bias = -||c||^2 [B, N]``.

    ``linear_logits(query, weight, bias)`` equals ``prototype_logits`` plus ``||query||^2``, the
    same for every class of a query: the same softmax, the same predictions.
    """
    c = prototypes(support, support_y, ways)
    return 2 * c, -c.pow(2).sum(-1)
