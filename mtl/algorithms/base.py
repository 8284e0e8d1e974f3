"""What every algorithm wrapper shares: its settings and the metrics it reports.

An algorithm is a thin ``nn.Module`` around a model (learn2learn style): the arithmetic lives in
free functions (``mtl.inner``), the wrapper only holds the settings and the meta-parameters, so
``algorithm.parameters()`` is what the meta-optimizer steps. The engine calls, per meta-batch::

    optimizer.zero_grad()
    metrics = algorithm.meta_gradient(batch)   # fills .grad, returns {"loss", "accuracy"}
    optimizer.step()
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.inner import map_tasks


class MetaLearner(nn.Module):
    """Base of the wrappers: ``cls(model, *, inner_steps, inner_lr, first_order, strategy, ...)``.

    Args:
        model: the network (``mtl.models``), its parameters the meta-parameters.
        inner_steps: gradient steps of the inner loop during meta-training.
        inner_lr: the inner learning rate (alpha).
        first_order: drop the second-order terms of the meta-gradient.
        strategy: how tasks are batched: "vmap", "loop" or "auto" (see ``mtl.inner``).
        chunk_size: at most this many tasks at a time (bounds memory).
        loss_fn: ``F.cross_entropy`` (classification) or e.g. ``F.mse_loss`` (sinusoid regression).
    """

    def __init__(self, model: nn.Module, *, inner_steps: int = 1, inner_lr: float = 0.4,
                 first_order: bool = False, strategy: str = "auto", chunk_size: int | None = None,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> None:
        super().__init__()
        self.model = model
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.strategy = strategy
        self.chunk_size = chunk_size
        self.loss_fn = loss_fn

    def forward(self, x: Tensor) -> Tensor:
        """The un-adapted model: ``[n, ...] -> [n, num_classes]``."""
        return self.model(x)

    def _outputs(self, batch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Per-task query losses ``[B]`` and query outputs ``[B, N*Q, N]`` after ``steps`` inner
        steps. Learners that adapt through ``maml_outputs`` define this and inherit the two below."""
        raise NotImplementedError

    def meta_gradient(self, batch) -> dict[str, float]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad``; return loss (and accuracy)."""
        losses, outputs = self._outputs(batch, self.inner_steps, self.first_order)
        loss = losses.mean()
        loss.backward()
        return metrics(loss, outputs, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        """Query outputs after adapting to each task: ``[B, N*Q, N]`` (no graph kept)."""
        steps = self.inner_steps if inner_steps is None else inner_steps
        with torch.no_grad():
            return self._outputs(batch, steps, first_order=True)[1]


def embed_tasks(body: nn.Module, x: Tensor, strategy: str = "auto") -> Tensor:
    """``body`` on each task separately: ``x [B, n, ...] -> [B, n, D]``.

    Per task, so that batch norm normalises each task with its own statistics (as in the inner
    loop), never with those of the whole meta-batch.
    """
    if strategy == "auto":
        strategy = "vmap" if x.device.type == "cuda" else "loop"
    return map_tasks(lambda _, task_x: body(task_x).flatten(1), None, (x,), strategy=strategy,
                     model=body)


def metrics(loss: Tensor, outputs: Tensor, targets: Tensor) -> dict[str, float]:
    """``{"loss": mean loss, "accuracy": fraction of correct argmax}`` (no accuracy for regression).

    ``outputs [B, n, num_classes]`` and ``targets [B, n]`` (class ids).
    """
    result = {"loss": float(loss.detach())}
    if not targets.dtype.is_floating_point:
        result["accuracy"] = float((outputs.detach().argmax(-1) == targets).float().mean())
    return result


__all__ = ["MetaLearner", "metrics"]
