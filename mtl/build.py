"""What a run is built from, shared by training, evaluation and adaptation: the network and
learner a config describes, the device, the learner state of a checkpoint, the progress switch.

``mtl.train`` and ``mtl.evaluate`` both import this module (and not each other's building blocks).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtl.config import TrainConfig
from mtl.errors import CheckpointError, ConfigError

__all__ = ["register_algorithm", "algorithm_class", "build_model", "build_learner",
           "load_learner_state", "resolve_device", "progress_enabled"]


def register_algorithm(name: str, cls: type) -> None:
    """Make ``name`` usable as ``--algorithm name`` without editing ``mtl.algorithms``."""
    from mtl.algorithms import register_algorithm as register

    register(name, cls)


def algorithm_class(name: str) -> type:
    from mtl.algorithms import algorithm_class as lookup

    return lookup(name)


def build_model(config: TrainConfig) -> nn.Module:
    """The network named by ``config.model`` (resolved config), sized for the dataset."""
    from mtl import models

    if config.model == "mlp":
        return models.MLP(hidden=config.hidden)
    channels = config.channels or (1 if config.dataset == "omniglot" else 3)
    if config.model == "conv4":
        return models.Conv4(channels, config.ways, hidden=config.hidden, image_size=config.image_size)
    if config.model == "resnet12":
        return models.ResNet12(channels, config.ways)
    raise ConfigError(f"unknown model {config.model!r}; choose conv4, resnet12 or mlp")


def build_learner(config: TrainConfig, device: torch.device) -> nn.Module:
    """The algorithm module (model inside) for a resolved config, on ``device``."""
    cls = algorithm_class(config.algorithm)
    if hasattr(cls, "from_config"):
        return cls.from_config(config, device).to(device)
    extra = dict(config.extra)
    if config.dataset == "sinusoid" and "loss_fn" in inspect.signature(cls).parameters:
        extra["loss_fn"] = F.mse_loss  # regression: algorithms default to cross-entropy
    learner = cls(build_model(config), inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                  first_order=config.first_order, strategy=config.strategy, **extra)
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


def progress_enabled(progress: bool | None) -> bool:
    """Bars on unless ``progress=False`` or ``MTL_PROGRESS`` says off (``mtl.data._progress``)."""
    from mtl.data._progress import progress_enabled as enabled

    return enabled(progress)
