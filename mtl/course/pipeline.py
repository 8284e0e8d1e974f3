"""The whole meta-transfer learning pipeline in one call: pre-train -> SS (+HT) -> evaluate, with baselines.

    from mtl.course.pipeline import run_pipeline
    results = run_pipeline("cpu", out="runs/mtl-cpu")        # the CPU profile (~1.5 min, 2 cores)
    results["test"]["mtl+ht"]["mean"]

    python -m mtl pipeline --profile gpu-miniimagenet-5w1s --out runs/mtl-gpu --budget 3600

Every stage goes through the engine (``mtl.engine.train.train``: checkpoints, resume, metrics.jsonl in
``out/<stage>``) and every learner is scored by ``mtl.engine.evaluate`` on the *same* fixed test episodes
(seed 0). Stages: ``pretrain`` (``--algorithm pretrain``), ``mtl+ht`` (Scaling & Shifting with the
hard-task meta-batch), ``mtl`` (without HT: the ablation, when the profile asks for it), then the
baselines on the same pre-trained network. The results file is rewritten after every stage, so a
run stopped by its time budget keeps its partial progress (``out/results-<profile>.json``). A stage
whose run folder is complete is reused (the 5-shot profile reuses the 1-shot pre-training when given the same ``out``).
"""
from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mtl.engine.config import TrainConfig
from mtl.errors import ConfigError, MTLError
from mtl.io import atomic_write_text

_COMMON = dict(rotations=False, val_episodes=100, log_every=10, eval_batch=20, seed=0)

#: profile name -> settings (``pretrain`` / ``meta`` are TrainConfig fields of those stages)
PROFILES: dict[str, dict[str, Any]] = {
    # The lesson: Omniglot (MAML split, no rotations: 1100 training characters), a narrow ResNet-12,
    # 5-way 1-shot, with the HT ablation. About 1.5 minutes on 2 quiet CPU cores (RESULTS.md).
    "cpu": dict(
        device="cpu", episodes=200, ablation=True,
        baselines=("nearest-centroid", "linear-probe", "finetune-head"),
        pretrain=dict(_COMMON, dataset="omniglot", meta_batch=64, iterations=600, meta_lr=0.1,
                      lr_schedule="linear", val_every=600, val_episodes=50,
                      extra=dict(channels=[8, 20, 40, 80])),
        meta=dict(_COMMON, dataset="omniglot", ways=5, shots=1, queries=5, meta_batch=4,
                  inner_steps=10, inner_lr=0.1, test_inner_steps=10, meta_lr=1e-3, iterations=60,
                  val_every=60, val_episodes=50),
    ),
    # The paper's protocol (Sun et al. 2019; MetaOptNet widths): ResNet-12 pre-trained on the 64
    # mini-ImageNet base classes (batch 128, SGD 0.1, ~100 epochs = 30,000 steps; linear decay instead
    # of the paper's steps), then SS + HT with 100 inner steps of 0.01 on the head, Adam 1e-4.
    "gpu-miniimagenet-5w1s": dict(
        device="auto", episodes=600, ablation=True,
        baselines=("nearest-centroid", "linear-probe", "finetune-head", "finetune-all"),
        pretrain=dict(_COMMON, dataset="mini-imagenet", meta_batch=128, iterations=30_000, meta_lr=0.1,
                      lr_schedule="linear", val_every=1000, val_episodes=200,
                      extra=dict(channels=[64, 160, 320, 640], bf16=True, channels_last=True)),
        meta=dict(_COMMON, dataset="mini-imagenet", ways=5, shots=1, queries=15, meta_batch=2,
                  inner_steps=100, inner_lr=0.01, test_inner_steps=100, meta_lr=1e-4, iterations=8000,
                  val_every=500, val_episodes=200, eval_batch=10),
    ),
}
PROFILES["gpu-miniimagenet-5w5s"] = copy.deepcopy(PROFILES["gpu-miniimagenet-5w1s"])
PROFILES["gpu-miniimagenet-5w5s"]["meta"].update(shots=5)


def _check_settings(settings: dict, budget_s: float | None) -> None:
    """Every setting checked before the first stage trains (a bad one would fail after training)."""
    from mtl.engine.build import resolve_device

    episodes = settings["episodes"]
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be a whole number >= 1, got {episodes!r} (--episodes)")
    if budget_s is not None and not budget_s > 0:
        raise ConfigError(f"the budget must be a positive number of seconds, got {budget_s} (--budget)")
    resolve_device(settings["device"])
    TrainConfig.from_dict(dict(settings["pretrain"], algorithm="pretrain"))  # checks every field
    TrainConfig.from_dict(dict(settings["meta"], algorithm="meta-transfer"))


def _stage_done(folder: Path) -> bool:
    return (folder / "summary.json").is_file() and (folder / "last.pt").is_file()


def _train_stage(config: dict, folder: Path, progress: bool | None) -> dict:
    """Train one stage with the engine (resumed when its folder holds an unfinished run)."""
    from mtl.engine.train import train

    if _stage_done(folder):
        return json.loads((folder / "summary.json").read_text())
    resume = (folder / "last.pt").is_file()
    summary = train(config, out=folder, resume=resume, overwrite=not resume and folder.exists(),
                    progress=progress)
    return json.loads((folder / "summary.json").read_text()) if folder.exists() else summary.to_dict()


def run_pipeline(profile: str = "cpu", *, out: str | Path = "runs/mtl-pipeline", budget_s: float | None = None,
                 progress: bool | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the profile's stages; return (and write to ``out/results-<profile>.json``) what they measured.

    Args:
        profile: a key of ``PROFILES``.
        out: folder of the stages' run folders and the results file.
        budget_s: total wall-time budget: pre-training gets half, each meta-training run its share
            of the rest (evaluation time not counted); None: the iterations of the profile.
        overrides: replace top-level profile settings (``episodes=50``, ``device="cuda"``,
            ``pretrain={...}``/``meta={...}`` are merged into the stage's config).
    Returns:
        ``{"profile", "device", "torch", "stages": {name: summary}, "test": {name: {"mean", "ci95", "n"}},
        "wall_s": {...}}``.
    """
    if profile not in PROFILES:
        raise MTLError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    settings = copy.deepcopy(PROFILES[profile])
    for key, value in overrides.items():
        if key in ("pretrain", "meta"):
            settings[key].update(value)
        else:
            settings[key] = value
    _check_settings(settings, budget_s)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = settings["device"]
    results: dict[str, Any] = {"profile": profile, "settings": settings, "torch": torch.__version__,
                               "device": _device_name(device), "threads": torch.get_num_threads(),
                               "stages": {}, "test": {}, "wall_s": {}}

    def save():
        atomic_write_text(out / f"results-{profile}.json", json.dumps(results, indent=2, default=str) + "\n")

    started = time.perf_counter()
    pre = dict(settings["pretrain"], algorithm="pretrain", device=device)
    meta_runs = ["mtl+ht"] + (["mtl"] if settings.get("ablation") else [])
    if budget_s is not None:
        pre["time_budget_s"] = budget_s / 2
    t = time.perf_counter()
    results["stages"]["pretrain"] = _brief(_train_stage(pre, out / "pretrain", progress))
    results["wall_s"]["pretrain"] = round(time.perf_counter() - t, 1)
    save()

    learners = {}
    for name in meta_runs:
        meta = dict(settings["meta"], algorithm="meta-transfer", device=device)
        meta["extra"] = dict(meta.get("extra", {}), pretrained=str((out / "pretrain").resolve()),
                             hard_tasks=name == "mtl+ht")
        if budget_s is not None:
            meta["time_budget_s"] = budget_s / 2 / len(meta_runs)
        t = time.perf_counter()
        folder = out / f"{name.replace('+', '-')}-{meta['ways']}w{meta['shots']}s"
        results["stages"][name] = _brief(_train_stage(meta, folder, progress))
        results["wall_s"][name] = round(time.perf_counter() - t, 1)
        save()
        learners[name] = (folder, meta)

    t = time.perf_counter()
    _evaluate_all(settings, learners, out, results, save, progress)
    results["wall_s"]["evaluation"] = round(time.perf_counter() - t, 1)
    results["wall_s"]["total"] = round(time.perf_counter() - started, 1)
    save()
    return results


def _evaluate_all(settings, learners, out, results, save, progress) -> None:
    from mtl.engine.config import TrainConfig
    from mtl.engine.evaluate import EpisodeSet, evaluate, evaluate_checkpoint
    from mtl.engine.build import build_learner, resolve_device

    meta = dict(settings["meta"], algorithm="meta-transfer", device=settings["device"])
    meta["extra"] = dict(meta.get("extra", {}), pretrained=str((out / "pretrain").resolve()))
    config = TrainConfig.from_dict(meta).resolved()
    device = resolve_device(config.device)
    episodes = EpisodeSet(config, "test", n=settings["episodes"], seed=0, device=device,
                          progress=bool(progress))
    for name, (folder, _) in learners.items():
        result = evaluate_checkpoint(folder, episodes=settings["episodes"], seed=0, device=str(device),
                                     progress=progress)
        results["test"][name] = {"mean": result.mean, "ci95": result.ci95, "n": result.n}
        save()
    for name in settings["baselines"]:
        base = TrainConfig.from_dict(dict(meta, algorithm=name)).resolved()
        learner = build_learner(base, device)
        steps = 50 if name == "finetune-all" else 100
        start = time.perf_counter()
        result = evaluate(learner, base, episode_set=episodes, inner_steps=steps, progress=progress)
        results["test"][name] = {"mean": result.mean, "ci95": result.ci95, "n": result.n,
                                 "inner_steps": steps, "inner_lr": base.inner_lr,
                                 "seconds": round(time.perf_counter() - start, 1)}
        save()


def _brief(summary: dict) -> dict:
    keep = ("steps", "stopped", "wall_time_s", "best_val", "last_val")
    brief = {k: summary.get(k) for k in keep}
    config = summary.get("config", {})
    if config.get("algorithm") == "pretrain" and summary.get("wall_time_s"):
        images = summary["steps"] * config["meta_batch"]
        brief["images_per_s_incl_validation"] = round(images / summary["wall_time_s"], 1)
    return brief


def _device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()})"
