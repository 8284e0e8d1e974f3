"""Meta-transfer learning (Sun, Liu, Chua, Schiele, CVPR 2019): Scaling & Shifting + hard tasks.

A pre-trained network (``mtl.algorithms.transfer.pretrain``) is frozen. For every convolution ``conv(x; W, b)`` of it,
with ``W`` of shape ``[C_out, C_in, k, k]``, meta-learning owns a Scaling ``s`` (init 1) and a
Shifting ``t`` (init 0), and the network computes ``conv(x; W * s, b + t)`` instead (applied with
``torch.func.functional_call``; at initialisation this is exactly the pre-trained network). As in
the paper and its official code, ``s`` has one scalar per k x k kernel slice, shape
``[C_out, C_in, 1, 1]`` broadcast over the slice, and ``t`` one value per output channel
``[C_out]``. ``scaling="channel"`` is the lighter variant with one scale per output channel
``[C_out, 1, 1, 1]`` (FiLM-like); it can only rescale a whole filter. The task learner is a linear
classifier on the features, adapted by ``inner_steps`` gradient steps on the support set from a
initialisation of 0 (meta-learned too with ``learn_head_init=True``, as in the paper). The
meta-parameters are ``scale``/``shift`` of every conv (and that initialisation); the frozen
weights are buffers of ``self.encoder``, never parameters, so no optimizer can touch them.

The frozen network runs in eval mode (batch norm with its pre-training running statistics): its
features then do not depend on the other images of the batch, and a per-channel scale/shift is not
normalised away by batch statistics.

Hard-task meta-batch (``hard_tasks``): after a meta-batch, the class with the lowest query accuracy
of each task (ties broken at random) is a "hard class"; ``hard_tasks`` new tasks are sampled from
those classes (all of them when there are at most N of them, filled with random other classes;
else N of them at random) with fresh images, and their meta-loss is learned from in the same
meta-step (every task weighted equally). The class ids of each task come with the batch
(``TaskBatch.classes``, set by ``EpisodeSampler``) or as ``classes``; the hard tasks are drawn
from the sampler given as ``sampler=`` or to ``attach_sampler``.

The inner loop over the linear head is batched over tasks without ``vmap``: the tasks' losses are
summed, so the gradient with respect to task b's head is task b's own gradient.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mtl.algorithms.base import Learner, fixed_ways_error
from mtl.errors import ConfigError, HardTaskError, MTLError, ScalingShiftingError
from mtl.core.heads import adapt_linear_head, linear_logits


SCALINGS = ("kernel", "channel")


def encoder_of(model: nn.Module) -> nn.Module:
    """The feature extractor of ``model``: ``model.encoder`` (ResNet12) or ``model.features`` (Conv4)."""
    for name in ("encoder", "features"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ScalingShiftingError(
        f"{type(model).__name__} has no `encoder` or `features` sub-module to freeze; use "
        "mtl.models.resnet.ResNet12 (pre-trained with mtl.algorithms.transfer.pretrain) or mtl.models.Conv4")


def _feature_dim(model: nn.Module) -> int:
    for name in ("feature_dim",):
        if isinstance(getattr(model, name, None), int):
            return getattr(model, name)
    for name in ("classifier", "head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head.in_features
    raise ScalingShiftingError(f"cannot tell the feature size of {type(model).__name__}: give it a "
                               "`feature_dim` attribute or a linear `classifier`/`head`")


def _ways_of(model: nn.Module) -> int | None:
    for name in ("head", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head.out_features
    return None


def freeze_to_buffers(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters are turned into (persistent) buffers, eval mode."""
    frozen = copy.deepcopy(module)
    for sub in frozen.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach().clone())
    return frozen.eval()


def class_accuracy(query_logits: Tensor, query_y: Tensor) -> Tensor:
    """Each task's query accuracy per class: ``query_logits [B, M, N]``, ``query_y [B, M]`` -> ``[B, N]``."""
    b, _, n = query_logits.shape
    correct = (query_logits.argmax(-1) == query_y).float()
    hits = torch.zeros(b, n, device=correct.device).scatter_add_(1, query_y, correct)
    counts = torch.zeros(b, n, device=correct.device).scatter_add_(1, query_y, torch.ones_like(correct))
    return hits / counts.clamp_min(1)


def hardest_classes(query_logits: Tensor, query_y: Tensor, classes: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
    """The dataset class id with the lowest query accuracy in each task (ties at random).

    ``query_logits [B, M, N]``, ``query_y [B, M]``, ``classes [B, N]`` -> ``[B]`` int64.
    """
    b, _, n = query_logits.shape
    accuracy = class_accuracy(query_logits, query_y).cpu()
    noise = torch.rand(b, n, generator=generator) * 1e-3  # below 1/M: breaks ties only
    worst = (accuracy + noise).argmin(1)
    return classes.cpu().gather(1, worst[:, None]).squeeze(1)


def tied_hardest(query_logits: Tensor, query_y: Tensor) -> Tensor:
    """Whether each task's lowest class accuracy is shared by two or more classes (its hardest class
    is then a random pick among them; e.g. every query right): ``[B, M, N]``, ``[B, M]`` -> ``[B]`` bool."""
    accuracy = class_accuracy(query_logits, query_y)
    return (accuracy == accuracy.min(1, keepdim=True).values).sum(1) > 1


def hard_task_classes(hard: Tensor, *, num_tasks: int, ways: int, num_classes: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """Class ids ``[num_tasks, ways]`` of tasks re-sampled from the ``hard`` classes ``[H]``.

    Each task holds every distinct hard class if there are at most ``ways`` of them (the rest
    filled with other classes at random), else ``ways`` of them at random; label order is shuffled.
    """
    if num_classes < ways:
        raise HardTaskError(f"hard tasks need at least ways={ways} classes, the dataset has "
                            f"{num_classes}; lower --ways or use a larger split")
    pool = torch.unique(hard.cpu())
    tasks = []
    for _ in range(num_tasks):
        if len(pool) >= ways:
            chosen = pool[torch.randperm(len(pool), generator=generator)[:ways]]
        else:
            mask = torch.ones(num_classes, dtype=torch.bool)
            mask[pool] = False
            others = mask.nonzero().squeeze(1)
            fill = others[torch.randperm(len(others), generator=generator)[: ways - len(pool)]]
            chosen = torch.cat([pool, fill])
        tasks.append(chosen[torch.randperm(ways, generator=generator)])
    return torch.stack(tasks)


class MetaTransfer(Learner):
    """Scaling & Shifting on a frozen pre-trained network, linear head adapted in the inner loop.

    Args:
        model: the pre-trained network (``ResNet12``; anything with an ``encoder``/``features``
            module of conv layers). It is copied and frozen; the original is left untouched.
        inner_steps, inner_lr: gradient steps / step size on the linear head per task.
        first_order: do not back-propagate through the head's inner steps.
        ways: N of the tasks (default: ``model.head``/``model.classifier`` outputs).
        hard_tasks: extra hard tasks per meta-batch (``True``: as many as the meta-batch; 0: off).
        sampler: the episode sampler the hard tasks are drawn from (or call ``attach_sampler``).
        seed: seed of the hard-class tie-breaking and of the hard tasks' class choice.
        learn_head_init: meta-learn the head's initialisation too, as the paper does. Off by
            default: task labels are a random permutation of the classes, so the best initialisation
            is one that treats every label alike, i.e. equivalent to 0; a learned one can only
            drift with the noise of the meta-gradient.

        scaling: ``"kernel"`` (the paper's: one scale per kernel slice, ``[C_out, C_in, 1, 1]``)
            or ``"channel"`` (one per output channel, ``[C_out, 1, 1, 1]``).

    Meta-parameters (``self.parameters()``): ``scale.*`` (shape per ``scaling``) and ``shift.*``
    ``[C_out]`` per conv, and with ``learn_head_init`` the head's ``head_weight [N, D]`` and
    ``head_bias [N]`` (initialised to 0).
    """

    def __init__(self, model: nn.Module, *, inner_steps: int = 20, inner_lr: float = 0.01,
                 first_order: bool = False, ways: int | None = None,
                 hard_tasks: int | bool = 0, sampler=None, seed: int = 0,
                 learn_head_init: bool = False, scaling: str = "kernel"):
        super().__init__()
        if scaling not in SCALINGS:
            raise ScalingShiftingError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r} "
                                       "(set it with --set scaling=kernel)")
        self.scaling = scaling
        self.encoder = freeze_to_buffers(encoder_of(model))
        self.conv_names = [name for name, m in self.encoder.named_modules() if isinstance(m, nn.Conv2d)]
        if not self.conv_names:
            raise ScalingShiftingError(
                f"Scaling & Shifting scales conv layers, and {type(model).__name__}'s encoder has none; "
                "use a convolutional backbone (mtl.models.resnet.ResNet12 or mtl.models.Conv4)")
        ways = ways if ways is not None else _ways_of(model)
        if ways is None:
            raise MTLError("MetaTransfer needs the number of ways: pass ways=N")
        self.ways, self.inner_steps, self.inner_lr = int(ways), int(inner_steps), float(inner_lr)
        self.first_order = first_order
        self.hard_tasks = hard_tasks
        self.scale, self.shift = nn.ParameterDict(), nn.ParameterDict()
        for name in self.conv_names:
            conv = self.encoder.get_submodule(name)
            in_per_group = conv.in_channels // conv.groups if scaling == "kernel" else 1
            key = name.replace(".", "_")
            self.scale[key] = nn.Parameter(torch.ones(conv.out_channels, in_per_group, 1, 1))
            self.shift[key] = nn.Parameter(torch.zeros(conv.out_channels))
        dim = _feature_dim(model)
        if learn_head_init:
            self.head_weight = nn.Parameter(torch.zeros(self.ways, dim))
            self.head_bias = nn.Parameter(torch.zeros(self.ways))
        else:
            self.register_buffer("head_weight", torch.zeros(self.ways, dim))
            self.register_buffer("head_bias", torch.zeros(self.ways))
        self._sampler = sampler
        self._generator = torch.Generator().manual_seed(seed)
        self.last_hard_classes: Tensor | None = None
        if self._num_hard(1) and self._sampler is not None:
            self._check_enough_classes()

    CONFIG_SETTINGS = ("pretrained",)

    @classmethod
    def from_config(cls, config, build_model) -> "MetaTransfer":
        """The network of ``--set pretrained=PATH``; ``--hard-tasks`` sets ``hard_tasks``. The
        head's inner loop is batched over tasks by itself: a ``--strategy`` is refused."""
        if config.strategy != "auto":
            raise ConfigError(f"--algorithm {config.algorithm} batches its linear head's inner loop over "
                              f"the tasks itself, with no --strategy: drop --strategy {config.strategy}")
        backbone, extra = pretrained_from_config(config, build_model)
        extra.setdefault("seed", config.seed)
        return cls(backbone, inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                   first_order=config.first_order, ways=config.ways, **extra)

    # --- the network -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "MetaTransfer":
        super().train(mode)
        self.encoder.eval()  # frozen: batch norm keeps its pre-training statistics
        return self

    def scaled_weights(self) -> dict[str, Tensor]:
        """``{"<conv>.weight": W * scale, "<conv>.bias": b + shift}`` for every frozen conv."""
        params = {}
        for name in self.conv_names:
            conv = self.encoder.get_submodule(name)
            key = name.replace(".", "_")
            params[f"{name}.weight"] = conv.weight * self.scale[key]  # [C_out, C_in | 1, 1, 1]
            shift = self.shift[key]
            params[f"{name}.bias"] = shift if conv.bias is None else conv.bias + shift
        return params

    def features(self, x: Tensor) -> Tensor:
        """``[..., C, H, W]`` -> ``[..., D]``: the frozen network with Scaling & Shifting."""
        lead = x.shape[:-3]
        out = functional_call(self.encoder, self.scaled_weights(), (x.reshape(-1, *x.shape[-3:]),))
        return out.reshape(*lead, -1)

    def _adapted_logits(self, batch, *, steps: int, create_graph: bool) -> Tensor:
        support, query = self.features(batch.support_x), self.features(batch.query_x)
        b = support.shape[0]
        weight = self.head_weight.expand(b, -1, -1)
        bias = self.head_bias.expand(b, -1)
        if not weight.requires_grad:  # evaluation under no_grad: make the head adaptable
            weight, bias = weight.detach().requires_grad_(), bias.detach().requires_grad_()
        weight, bias = adapt_linear_head(support, batch.support_y, weight, bias, steps=steps,
                                         lr=self.inner_lr, create_graph=create_graph)
        return linear_logits(query, weight, bias)

    def meta_parameter_count(self) -> dict[str, int]:
        """How many numbers meta-learning owns: ``{"scale", "shift", "head_init", "total"}``."""
        counts = {"scale": sum(p.numel() for p in self.scale.values()),
                  "shift": sum(p.numel() for p in self.shift.values()),
                  "head_init": sum(p.numel() for p in (self.head_weight, self.head_bias)
                                   if isinstance(p, nn.Parameter))}
        counts["total"] = sum(counts.values())
        return counts

    # --- the learner contract ----------------------------------------------------------------
    def per_task_parameters(self, ways: int) -> int:
        """The linear head ``[N, D]`` and its bias, adapted to each task."""
        return self.head_weight.numel() + self.head_bias.numel()

    def set_ways(self, ways: int) -> None:
        """A learned head initialisation fixes the ways; a zero one is resized."""
        if self.head_weight.shape[0] == ways:
            return
        if isinstance(self.head_weight, nn.Parameter):
            raise fixed_ways_error(self, self.head_weight.shape[0], ways)
        dim = self.head_weight.shape[1]
        self.head_weight = self.head_weight.new_zeros(ways, dim)
        self.head_bias = self.head_bias.new_zeros(ways)
        self.ways = ways

    def attach_sampler(self, sampler):
        """Keep ``sampler`` to draw the hard tasks from; meta-training batches come from it unchanged."""
        self._sampler = sampler
        if self._num_hard(1):
            self._check_enough_classes()
        return sampler

    def _meta_loss(self, batch) -> tuple[Tensor, Tensor]:
        logits = self._adapted_logits(batch, steps=self.inner_steps, create_graph=not self.first_order)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, logits

    def meta_gradient(self, batch, classes: Tensor | None = None) -> dict[str, float]:
        """Accumulate the meta-gradient of ``batch`` (and its hard tasks) into ``.grad``.

        ``classes``: dataset class ids ``[B, N]`` of the batch's tasks (needed for hard tasks;
        default: ``batch.classes``, set by the ``EpisodeSampler`` that drew it).
        """
        loss, logits = self._meta_loss(batch)
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        metrics = {"loss": loss.item(), "accuracy": accuracy.item()}
        num_hard = self._num_hard(batch.query_y.shape[0])
        if num_hard == 0:
            loss.backward()
            return metrics
        classes = self._classes_for(batch, classes)
        hard = hardest_classes(logits.detach(), batch.query_y, classes, self._generator)
        metrics["tied_hardest"] = tied_hardest(logits.detach(), batch.query_y).float().mean().item()
        hard_classes = hard_task_classes(hard, num_tasks=num_hard, ways=self.ways,
                                         num_classes=self._num_classes(), generator=self._generator)
        hard_batch = self._sampler.sample(num_hard, classes=hard_classes)
        hard_loss, hard_logits = self._meta_loss(hard_batch)
        b = batch.query_y.shape[0]
        ((loss * b + hard_loss * num_hard) / (b + num_hard)).backward()
        self.last_hard_classes = hard_classes
        metrics["hard_loss"] = hard_loss.item()
        metrics["hard_accuracy"] = (hard_logits.argmax(-1) == hard_batch.query_y).float().mean().item()
        return metrics

    @torch.no_grad()
    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        """Query logits ``[B, N*Q, N]`` after adapting the head on each task's support set."""
        steps = self.inner_steps if inner_steps is None else inner_steps
        with torch.enable_grad():
            support = self.features(batch.support_x).detach()
            query = self.features(batch.query_x).detach()
            b = support.shape[0]
            weight = self.head_weight.detach().expand(b, -1, -1).clone().requires_grad_()
            bias = self.head_bias.detach().expand(b, -1).clone().requires_grad_()
            weight, bias = adapt_linear_head(support, batch.support_y, weight, bias, steps=steps,
                                             lr=self.inner_lr, create_graph=False)
        return linear_logits(query, weight.detach(), bias.detach())

    # --- hard tasks -----------------------------------------------------------------------------
    def _num_hard(self, meta_batch: int) -> int:
        if self.hard_tasks is True:
            return meta_batch
        return int(self.hard_tasks or 0)

    def _num_classes(self) -> int:
        images = getattr(self._sampler, "images", None)
        if images is None:
            raise HardTaskError("hard tasks need an EpisodeSampler (with .images) to re-sample from")
        return images.shape[0]

    def _check_enough_classes(self) -> None:
        if self._num_classes() < self.ways:
            raise HardTaskError(f"hard tasks need at least ways={self.ways} classes, the dataset has "
                                f"{self._num_classes()}; lower the ways or use a split with more classes")

    def _classes_for(self, batch, classes: Tensor | None) -> Tensor:
        if self._sampler is None:
            raise HardTaskError("hard tasks re-sample episodes: give MetaTransfer the sampler "
                                "(sampler=..., or algorithm.attach_sampler(sampler))")
        if classes is None:
            classes = getattr(batch, "classes", None)
        if classes is None:
            raise HardTaskError("hard tasks need each task's class ids: draw batches with an "
                                "EpisodeSampler (its TaskBatch carries them), or pass classes=")
        return classes


def pretrained_from_config(config, build_model) -> tuple[nn.Module, dict]:
    """``(the network of --set pretrained=RUN, the other extra settings)`` of an engine config;
    ``build_model`` is the engine's, which loads that pre-training run."""
    extra = dict(config.extra)
    if extra.pop("pretrained", None) is None:
        raise MTLError(f"--algorithm {config.algorithm} needs a pre-trained network: add --set pretrained=RUN "
                       "(the run folder of `python -m mtl train --algorithm pretrain`)")
    return build_model(), extra
