"""The learner contract, and what the inner-loop learners share.

A learner is a thin ``nn.Module`` around a model (learn2learn style): the arithmetic lives in free
functions (``mtl.core``), the learner holds the settings and the meta-parameters, so
``learner.parameters()`` is what the meta-optimizer steps. ``Learner`` declares every hook the
engine, evaluation, ``FewShotClassifier`` and the course's comparisons call, each with its
default; the engine calls, per meta-batch::

    optimizer.zero_grad()
    metrics = learner.meta_gradient(batch)   # fills .grad, returns {"loss", "accuracy"}
    optimizer.step()

and nothing outside this contract: no attribute probing, no class names.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.core.inner import map_tasks, resolve_strategy
from mtl.errors import MTLError


def _takes_keyword(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` accepts keyword ``name``: its ``__init__``, or a parent's that it
    forwards ``**kwargs`` to."""
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return True
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return False
    return False


class Learner(nn.Module):
    """What every registered learner offers the engine (override what differs from the default)."""

    #: ``config.extra`` keys that ``from_config`` reads beyond the constructor's keywords
    CONFIG_SETTINGS: tuple[str, ...] = ()
    #: False for a learner that only classifies (refused for regression datasets by the config)
    REGRESSION: bool = True
    #: ``TrainConfig`` fields (``ways``, ``meta_batch``, ``inner_steps``, ``inner_lr``) this learner
    #: sets when a run leaves them unset (``mtl.engine.config.GENERIC_DEFAULTS`` otherwise)
    DEFAULTS: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: Any, build_model: Callable[[], nn.Module]) -> "Learner":
        """The learner a resolved ``TrainConfig`` describes; ``build_model()`` makes its network.

        Default: ``cls(build_model(), inner_steps=, inner_lr=, first_order=, strategy=,
        **config.extra)``, with ``loss_fn=F.mse_loss`` for a regression dataset when the
        constructor takes a ``loss_fn``.
        """
        extra = dict(config.extra)
        if config.regression and _takes_keyword(cls, "loss_fn"):
            extra["loss_fn"] = F.mse_loss  # regression: learners default to cross-entropy
        return cls(build_model(), inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                   first_order=config.first_order, strategy=config.strategy, **extra)

    def attach_sampler(self, sampler: Any) -> Any:
        """The training task source to use: ``sampler`` (default), or a wrapper/replacement of it
        with ``.sample(meta_batch)`` (hard tasks; labelled batches for pre-training)."""
        return sampler

    def configure_optimizer(self, config: Any) -> torch.optim.Optimizer:
        """The meta-optimizer: ``config.optimizer`` (adam or sgd) at ``config.meta_lr`` over the
        parameters that require grad."""
        params = [p for p in self.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=config.meta_lr)
        return torch.optim.Adam(params, lr=config.meta_lr)

    def meta_gradient(self, batch: Any) -> dict[str, float]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad``; return loss (and accuracy)."""
        raise NotImplementedError

    def predict(self, batch: Any, *, inner_steps: int | None = None) -> Tensor:
        """Query outputs after adapting to each task of a ``TaskBatch``: ``[B, N*Q, N]`` (no graph)."""
        raise NotImplementedError

    def per_task_parameters(self, ways: int) -> int:
        """How many numbers adaptation sets anew for each ``ways``-way task (0: none are learned)."""
        raise NotImplementedError

    def set_ways(self, ways: int) -> None:
        """Get ready for ``ways``-way tasks, or raise ``MTLError`` naming the fix if the learner's
        output layer is fixed to another number. Default: any number of ways."""


def fixed_ways_error(learner: nn.Module, outputs: int, ways: int) -> MTLError:
    name = type(learner).__name__
    return MTLError(f"this {name} checkpoint's head predicts {outputs} classes (it was trained on "
                    f"{outputs}-way tasks), and the support set has {ways}: give {outputs} classes, or "
                    f"train a model for {ways}-way tasks (--ways {ways}); ProtoNet, Proto-MAML and the "
                    "pre-trained baselines take any number of classes")


def numel(parameters) -> int:
    return sum(p.numel() for p in parameters)


class MetaLearner(Learner):
    """Base of the wrappers: ``cls(model, *, inner_steps, inner_lr, first_order, strategy, ...)``.

    Args:
        model: the network (``mtl.models``), its parameters the meta-parameters.
        inner_steps: gradient steps of the inner loop during meta-training.
        inner_lr: the inner learning rate (alpha).
        first_order: drop the second-order terms of the meta-gradient.
        strategy: how tasks are batched: "auto" (vmap on CUDA, the loop elsewhere), "vmap" or
            "loop" (see ``mtl.core.inner``).
        loss_fn: ``F.cross_entropy`` (classification) or e.g. ``F.mse_loss`` (sinusoid regression).
    """

    def __init__(self, model: nn.Module, *, inner_steps: int = 1, inner_lr: float = 0.4,
                 first_order: bool = False, strategy: str = "auto",
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> None:
        super().__init__()
        self.model = model
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.strategy = strategy
        self.loss_fn = loss_fn

    def forward(self, x: Tensor) -> Tensor:
        """The un-adapted model: ``[n, ...] -> [n, num_classes]``."""
        return self.model(x)

    def _outputs(self, batch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Per-task query losses ``[B]`` and query outputs ``[B, N*Q, N]`` after ``steps`` inner
        steps. Learners that adapt through ``maml_outputs`` define this and inherit the two below."""
        raise NotImplementedError

    def meta_gradient(self, batch) -> dict[str, float]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad``; return loss (and accuracy).

        Under "vmap" one backward of the mean query loss; under the loop one backward per task,
        ``(loss_b / B).backward()``, so that one task's graph is alive at a time.
        """
        tasks = batch[0].shape[0]
        if resolve_strategy(self.strategy, self.model, batch[0].device) == "vmap":
            losses, outputs = self._outputs(batch, self.inner_steps, self.first_order)
            losses.mean().backward()
        else:
            losses, outputs = [], []
            for b in range(tasks):
                loss_b, out_b = self._outputs(task_of(batch, b), self.inner_steps, self.first_order)
                (loss_b.sum() / tasks).backward()
                losses.append(loss_b.detach())
                outputs.append(out_b.detach())
            losses, outputs = torch.cat(losses), torch.cat(outputs)
        return metrics(losses.mean(), outputs, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        """Query outputs after adapting to each task: ``[B, N*Q, N]`` (no graph kept)."""
        steps = self.inner_steps if inner_steps is None else inner_steps
        with torch.no_grad():
            return self._outputs(batch, steps, first_order=True)[1]

    def per_task_parameters(self, ways: int) -> int:
        """The whole network is adapted to each task."""
        return numel(self.model.parameters())

    def set_ways(self, ways: int) -> None:
        heads = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if heads and heads[-1].out_features != ways:
            raise fixed_ways_error(self, heads[-1].out_features, ways)


def embed_tasks(body: nn.Module, x: Tensor, strategy: str = "auto") -> Tensor:
    """``body`` on each task separately: ``x [B, n, ...] -> [B, n, D]``.

    Per task, so that batch norm normalises each task with its own statistics (as in the inner
    loop), never with those of the whole meta-batch.
    """
    return map_tasks(lambda _, task_x: body(task_x).flatten(1), None, (x,),
                     strategy=resolve_strategy(strategy, body, x.device), model=body)


def task_of(batch: Any, b: int) -> Any:
    """Task ``b`` of a batch of tasks, as a batch of one (``[1, ...]`` on every tensor)."""
    parts = [t[b:b + 1] for t in batch]
    return type(batch)(*parts) if hasattr(batch, "_fields") else tuple(parts)


def metrics(loss: Tensor, outputs: Tensor, targets: Tensor) -> dict[str, float]:
    """``{"loss": mean loss, "accuracy": fraction of correct argmax}`` (no accuracy for regression).

    ``outputs [B, n, num_classes]`` and ``targets [B, n]`` (class ids).
    """
    result = {"loss": float(loss.detach())}
    if not targets.dtype.is_floating_point:
        result["accuracy"] = float((outputs.detach().argmax(-1) == targets).float().mean())
    return result


__all__ = ["Learner", "MetaLearner", "embed_tasks", "task_of", "metrics", "numel"]
