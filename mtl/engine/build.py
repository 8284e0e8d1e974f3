"""What a run is built from, shared by training, evaluation and adaptation: the network and
learner a config describes, the device, the learner state of a checkpoint.

``mtl.engine.train`` and ``mtl.engine.evaluate`` both import this module (and not each other's building blocks).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtl.algorithms import Learner, algorithm_class
from mtl import models
from mtl.engine.config import TrainConfig
from mtl.errors import CheckpointError, ConfigError

__all__ = ["build_model", "build_learner", "load_learner_state", "resolve_device", "task_source"]


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
    """The network named by ``config.model`` (resolved config), sized for the dataset."""
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


def load_learner_state(learner: nn.Module, state: dict[str, Any], path: Path | str) -> None:
    """Load a checkpoint's learner state; a mismatch names the tensors that do not fit."""
    own = learner.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in own if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = ([f"shape of {s}" for s in shapes[:3]] + [f"missing {k}" for k in missing[:3]]
                + [f"unexpected {k}" for k in unexpected[:3]])
    try:
        learner.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = "; ".join(problems) or str(exc).splitlines()[0][:200]
        raise CheckpointError(
            f"{path} does not fit the model its config describes ({detail}). The config and the "
            "weights disagree: the file was edited, or written by an mtl whose models differ; "
            "retrain, or evaluate it with the mtl version that wrote it."
        ) from exc


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
