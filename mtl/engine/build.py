"""What a run is built from, shared by training, evaluation and adaptation: the network and
learner a config describes, the learner a checkpoint holds (``load_learner``; the files
themselves are ``mtl.engine.checkpoint``'s), and the device.

``mtl.engine.train`` and ``mtl.engine.evaluate`` both import this module (and not each other's building blocks).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtl.algorithms import Learner, algorithm_class
from mtl import models
from mtl.engine.checkpoint import checkpoint_path, load_checkpoint, load_learner_state, load_pretrained
from mtl.engine.config import TrainConfig
from mtl.errors import ConfigError

__all__ = ["build_model", "build_learner", "load_learner", "Loaded", "resolve_device", "task_source"]


def task_source(config: TrainConfig, split: str, *, ways: int, shots: int, queries: int,
                device: torch.device | str, seed: int, progress: bool = True, training: bool = False) -> Any:
    """The tasks of ``split`` of the config's dataset (``mtl.data.task_source``): ``ways``-way
    episodes of its images at ``config.image_size``, or its own task family. ``training``: the
    meta-training tasks (with the rotation classes, where the config asks for them)."""
    from mtl.data import task_source as source

    return source(config.dataset, split, ways=ways, shots=shots, queries=queries, device=device,
                  seed=seed, image_size=config.image_size, progress=progress,
                  **config.dataset_options(training))


def build_model(config: TrainConfig) -> nn.Module:
    """The network named by ``config.model`` (resolved config), sized for the dataset; with a
    ``pretrained`` setting (``--set pretrained=RUN``: transfer and meta-transfer learning), the
    network of that pre-training run (``mtl.engine.checkpoint.load_pretrained``)."""
    if config.extra.get("pretrained") is not None:
        return load_pretrained(config.extra["pretrained"])
    if config.model == "mlp":
        return models.MLP(hidden=config.hidden)
    channels = config.channels or config.spec.defaults()["channels"]
    if config.model == "conv4":
        return models.Conv4(channels, config.ways, hidden=config.hidden, image_size=config.image_size)
    if config.model == "resnet12":
        return models.ResNet12(channels, config.ways)
    raise ConfigError(f"unknown model {config.model!r}; choose conv4, resnet12 or mlp")


def build_learner(config: TrainConfig, device: torch.device) -> Learner:
    """The learner (model inside) for a resolved config, on ``device``: the registered class's
    ``from_config`` (``mtl.algorithms.base.Learner``)."""
    learner = algorithm_class(config.algorithm).from_config(config, lambda: build_model(config))
    return learner.to(device)


@dataclass
class Loaded:
    """What `load_learner` returns: the ``learner`` (eval mode) on ``device``, its resolved
    ``config``, the ``step`` it was saved at and the ``path`` of the file read."""

    learner: nn.Module
    config: TrainConfig
    step: int
    path: Path
    device: torch.device


def load_learner(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> Loaded:
    """The learner of a checkpoint (a file, or a run folder: its best.pt, else last.pt), built
    from the config it records and loaded with its weights, on ``device`` (``auto``, ``cpu``,
    ``cuda[:N]``, checked before the file is read; None: the run's own ``device`` setting)."""
    if device is not None:
        device = resolve_device(device)
    path = checkpoint_path(path)
    data = load_checkpoint(path)
    config = TrainConfig.from_saved(data["config"], path)
    device = device if device is not None else resolve_device(config.device)
    learner = build_learner(config, device)
    load_learner_state(learner, data["learner"], path)
    return Loaded(learner.eval(), config.resolved(), int(data["step"]), path, device)


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (cuda when present), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(name)):
        raise ConfigError(f"device {str(name)!r} is not supported: use auto, cpu, cuda or cuda:N "
                          "(mtl runs on CPUs and CUDA GPUs)")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU: use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} "
                          f"GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device
