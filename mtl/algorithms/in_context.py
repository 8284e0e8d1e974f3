"""In-context learning (black-box meta-learning): a transformer reads the labelled support set and
the queries as one sequence and outputs the queries' labels (``mtl.models.in_context``).

Nothing is adapted per task: the support set is the network's *input*. Meta-training is plain
supervised learning on episodes, the query loss of the transformer's readout, one backward pass per
meta-batch. The episode sampler labels the classes of every task in a random order, so the network
must read the labels from its context; ``fixed_labels=True`` trains instead on tasks where every
class always has the same label (class id modulo the ways: Yin et al. 2020's non-mutually-exclusive
tasks), which a network can solve by memorising the training classes. ``inner_steps`` and
``inner_lr`` do not apply.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl import models
from mtl.algorithms.base import Learner, metrics
from mtl.data.episodes import FixedLabelTasks
from mtl.errors import ConfigError, MTLError
from mtl.models.in_context import InContextTransformer


class InContext(Learner):
    """``InContext(model)``: ``model`` an ``InContextTransformer`` (see ``from_config``)."""

    CONFIG_SETTINGS = ("width", "heads", "layers")

    def __init__(self, model: InContextTransformer, *, fixed_labels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fixed_labels = fixed_labels

    @classmethod
    def from_config(cls, config: Any, build_model) -> "InContext":
        """The encoder of ``config.model`` without its head (Conv4 with per-image layer norm, or the
        sinusoid MLP's body) under a transformer with ``config.ways`` label slots; ``extra`` may set
        ``width``, ``heads``, ``layers`` and ``fixed_labels``."""
        extra = dict(config.extra)
        shape = {key: extra.pop(key) for key in cls.CONFIG_SETTINGS if key in extra}
        if config.model == "mlp":
            encoder, features, labels, outputs = models.MLP(hidden=config.hidden).features, config.hidden, 2, 1
        elif config.model == "conv4":
            encoder = models.Conv4(config.channels, config.ways, hidden=config.hidden, image_size=config.image_size,
                                   norm="layer").features
            features = config.hidden * max(config.image_size // 16, 1) ** 2
            labels = outputs = config.ways
        else:
            raise ConfigError(f"--algorithm in-context encodes images with conv4, not {config.model}: "
                              "use --model conv4")
        return cls(InContextTransformer(encoder, features, labels, outputs, **shape), **extra)

    def attach_sampler(self, sampler: Any) -> Any:
        """Random labels per episode (the sampler's own), or fixed ones with ``fixed_labels``."""
        if self.fixed_labels:
            if not hasattr(sampler, "ways"):
                raise ConfigError("fixed_labels applies to image classification episodes, not to sinusoids")
            return FixedLabelTasks(sampler)
        return sampler

    def forward(self, batch) -> Tensor:
        """Query outputs ``[B, N*Q, N]`` (regression ``[B, Q, 1]``) of a ``TaskBatch``."""
        support_x, support_y, query_x = batch[0], batch[1], batch[2]
        if self.model.regression:
            return self.model(support_x, support_y, query_x)
        ways = int(support_y.max()) + 1
        self.set_ways(ways)
        return self.model(support_x, support_y, query_x)[..., :ways]

    def meta_gradient(self, batch) -> dict[str, float]:
        outputs = self(batch)
        if self.model.regression:
            loss = F.mse_loss(outputs, batch[3])
        else:
            loss = F.cross_entropy(outputs.flatten(0, 1), batch[3].flatten())
        loss.backward()
        return metrics(loss, outputs, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        """Query outputs of each task, read from its context (``inner_steps`` does not apply)."""
        with torch.no_grad():
            return self(batch)

    def per_task_parameters(self, ways: int) -> int:
        """None: a new task changes the network's input, not its weights."""
        return 0

    def set_ways(self, ways: int) -> None:
        """Up to the ways it was trained for (its label slots); more raises ``MTLError``."""
        if ways > self.model.labels:
            raise MTLError(
                f"this in-context checkpoint has {self.model.labels} label slots (it was trained on "
                f"{self.model.labels}-way tasks), and the support set has {ways} classes: give at most "
                f"{self.model.labels} classes, or train a model for {ways}-way tasks (--ways {ways})")
