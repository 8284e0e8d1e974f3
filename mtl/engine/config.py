"""A training run as plain values: `TrainConfig`, and named presets for the paper protocols.

A config holds only numbers, strings and booleans (plus a small ``extra`` dict forwarded to the
algorithm's constructor), so it round-trips through ``config.json`` and a checkpoint unchanged::

    from mtl.engine.config import preset, TrainConfig
    config = preset("cpu-maml-omniglot-5w1s", seed=1)          # a preset, with overrides
    config = TrainConfig(algorithm="maml", dataset="sinusoid")   # or by hand

Presets follow the papers' protocols (MAML, Finn et al. 2017, App. A.1; Reptile, Nichol et al.
2018; ProtoNets, Snell et al. 2017). Deviations from a paper are written beside the preset.
What a dataset implies (its splits, channels, image size, default model, regression or not) is read
from its spec in ``mtl.data.registry``, never from its name.
The ``cpu-*`` presets are small profiles sized for 2 CPU cores; ``RESULTS.md`` records what they reach.
"""
from __future__ import annotations

import contextvars
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mtl.core.checks import STRATEGIES
from mtl.data.registry import DatasetSpec, parse_name
from mtl.errors import ConfigError, DataError

MODELS = ("conv4", "resnet12", "mlp")

__all__ = ["TrainConfig", "PRESETS", "preset", "MODELS"]


@dataclass
class TrainConfig:
    """Everything that defines a run. ``None`` means "the default": the algorithm's (its
    ``DEFAULTS``, e.g. ProtoNet's one wide task per step), else `GENERIC_DEFAULTS`, and the
    dataset's for the model and image fields (see `resolved`)."""

    algorithm: str = "maml"
    dataset: str = "omniglot"
    ways: int | None = None            # N classes per task (None: 5 or the algorithm's; ignored for regression)
    shots: int = 1                     # K support examples per class (sinusoid: K points)
    queries: int = 15                  # Q query examples per class (sinusoid: Q points)
    meta_batch: int | None = None      # tasks per meta-step (None: 32 or the algorithm's)
    inner_steps: int | None = None     # inner-loop steps during meta-training (None: 1 or the algorithm's)
    inner_lr: float | None = None      # inner-loop step size alpha (None: 0.4 or the algorithm's)
    meta_lr: float = 1e-3              # outer step size beta
    iterations: int = 60_000           # meta-steps
    test_inner_steps: int | None = None  # inner steps at validation/test (None: inner_steps)
    test_ways: int | None = None       # ways at validation/test (None: ways if given, else 5)
    test_queries: int | None = None    # queries per class at validation/test (None: queries)
    test_shots: int | None = None      # shots at validation/test (None: shots; Reptile trains with more)
    first_order: bool = False
    strategy: str = "auto"             # "auto" (vmap on CUDA, the loop elsewhere) | "vmap" | "loop"
    optimizer: str = "adam"            # "adam" | "sgd" (Reptile: SGD on its pseudo-gradient)
    lr_schedule: str = "constant"      # "constant" | "linear" (to 0) | "cosine" (to 0) | "step" (halve every lr_step)
    lr_step: int = 2000                # for lr_schedule="step"
    model: str | None = None           # "conv4" | "resnet12" | "mlp" (None: from the dataset)
    hidden: int | None = None          # conv filters / MLP width (None: 64 Omniglot, 32 mini-ImageNet, 40 MLP)
    image_size: int | None = None      # None: 28 Omniglot, 84 mini-ImageNet and folders
    channels: int | None = None        # image channels (None: 1 Omniglot, 3 otherwise; folders: 1 or 3)
    rotations: bool = True             # Omniglot: 90-degree rotations as new training classes (MAML)
    val_every: int = 500               # validate (and checkpoint) every this many meta-steps
    val_episodes: int = 100            # size of the fixed validation episode set
    checkpoint_every: int | None = None  # None: val_every
    log_every: int = 50                # one averaged training row in metrics.jsonl per this many steps
    eval_batch: int = 16               # tasks per forward pass at validation/test
    eval_seed: int = 0                 # seed of the fixed validation episode set
    test_episodes: int = 0             # >0: evaluate on the test split at the end of train()
    time_budget_s: float | None = None  # stop early after this much wall time in the training loop
    device: str = "auto"               # "auto" (cuda when present) | "cpu" | "cuda" | "cuda:1" ...
    seed: int = 0
    init: str | None = None            # start from the learner weights of this checkpoint (another run's)
    extra: dict[str, Any] = field(default_factory=dict)  # forwarded to the algorithm's constructor
    preset: str | None = None          # the preset this config came from, for the record
    folder_classes: dict[str, list[str]] | None = None  # a folder dataset's classes per split (recorded)

    def __post_init__(self) -> None:
        _check(self)

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` default filled in from the algorithm and the dataset, checked
        for sense (a ``folder:`` dataset's folder was scanned when the config was made, not again)."""
        token = _SCAN_FOLDERS.set(False)
        try:
            _check(self)
            out = dataclasses.replace(self, extra=dict(self.extra), **_unset_defaults(self))
        finally:
            _SCAN_FOLDERS.reset(token)
        for name, value in self.spec.defaults().items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        if out.test_inner_steps is None:
            out.test_inner_steps = out.inner_steps
        if out.test_ways is None:
            out.test_ways = out.ways
        if out.test_queries is None:
            out.test_queries = out.queries
        if out.test_shots is None:
            out.test_shots = out.shots
        if out.checkpoint_every is None:
            out.checkpoint_every = out.val_every
        return out

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's spec (``mtl.data.registry``): splits, channels, regression or not, ..."""
        return _spec(self.dataset)

    @property
    def regression(self) -> bool:
        """Whether the dataset's tasks are regression (scored by mean squared error)."""
        return self.spec.regression

    def dataset_options(self, training: bool = False) -> dict[str, Any]:
        """What ``mtl.data.load_dataset`` needs beyond the name and image size: the rotation
        classes (for meta-training only), a folder's channels and recorded classes."""
        spec = self.spec
        options: dict[str, Any] = {}
        if spec.rotations:
            options["rotations"] = bool(self.rotations) and training
        if "channels" in spec.options:
            options["channels"] = self.channels
        if "classes" in spec.options and self.folder_classes is not None:
            options["classes"] = self.folder_classes
        return options

    def with_folder_classes(self) -> "TrainConfig":
        """For a ``folder:`` dataset, a copy that records the class list of each split (the seeded
        cut of the folder as it is now), so that a checkpoint is evaluated on the classes it was
        split into even after the folder gains or loses classes; other configs unchanged."""
        spec, path = parse_name(self.dataset)
        if spec.split_classes is None or self.folder_classes is not None:
            return self
        return dataclasses.replace(self, folder_classes=spec.split_classes(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {unknown}; known fields: {sorted(known)}. "
                "Was this config written by a newer mtl? Remove those keys or upgrade mtl."
            )
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any], source: Any) -> "TrainConfig":
        """The resolved config stored in checkpoint ``source``: every value checked as one from
        the command line (`CheckpointError` naming ``source`` otherwise), but a ``folder:``
        dataset is not scanned, so a checkpoint loads without its training images."""
        from mtl.errors import CheckpointError

        token = _SCAN_FOLDERS.set(False)
        try:
            if not isinstance(values, dict):
                raise ConfigError(f"its config is a {type(values).__name__}, not a dict")
            return cls.from_dict(values).resolved()
        except ConfigError as error:
            raise CheckpointError(f"{source} holds settings mtl refuses ({error}); it was not "
                                  "written by mtl, or was altered: use a checkpoint of "
                                  "`python -m mtl train`") from None
        finally:
            _SCAN_FOLDERS.reset(token)


#: a preset's inner-loop settings, which an algorithm whose ``DEFAULTS`` fix its inner loop replaces
INNER_LOOP_FIELDS = ("inner_steps", "inner_lr", "test_inner_steps", "first_order")

#: the values of these fields when neither the run nor its algorithm's ``DEFAULTS`` sets them
GENERIC_DEFAULTS: dict[str, Any] = {"ways": 5, "meta_batch": 32, "inner_steps": 1, "inner_lr": 0.4}


def algorithm_defaults(algorithm: str) -> dict[str, Any]:
    """The fields of `GENERIC_DEFAULTS` that ``algorithm`` sets otherwise (its class's ``DEFAULTS``)."""
    from mtl.algorithms import algorithm_class

    return dict(getattr(algorithm_class(algorithm), "DEFAULTS", {}))


def _unset_defaults(config: TrainConfig) -> dict[str, Any]:
    """``{field: value}`` for the fields of `GENERIC_DEFAULTS` left unset (None), from the
    algorithm's defaults, else the generic ones; evaluation is 5-way when ``ways`` was not given
    (an algorithm may train wider than it tests)."""
    unset = [name for name in GENERIC_DEFAULTS if getattr(config, name) is None]
    if not unset:
        return {}
    defaults = {**GENERIC_DEFAULTS, **algorithm_defaults(config.algorithm)}
    values = {name: defaults[name] for name in unset}
    if config.ways is None and config.test_ways is None:
        values["test_ways"] = GENERIC_DEFAULTS["ways"]
    return values


def _spec(dataset: Any) -> DatasetSpec:
    try:
        return parse_name(dataset)[0]
    except DataError as error:
        raise ConfigError(f"--dataset: {error}") from None


#: False while a config stored in a checkpoint is read (`TrainConfig.from_saved`)
_SCAN_FOLDERS: contextvars.ContextVar[bool] = contextvars.ContextVar("scan_folders", default=True)

#: sanity ceilings: a value above one is taken as a typo that would exhaust memory or time
CEILINGS = {"ways": 10_000, "test_ways": 10_000, "shots": 10_000, "test_shots": 10_000,
            "queries": 10_000, "test_queries": 10_000, "meta_batch": 4096, "eval_batch": 4096,
            "inner_steps": 1000, "test_inner_steps": 1000, "hidden": 4096, "image_size": 1024,
            "iterations": 10**9, "val_every": 10**9, "log_every": 10**9, "checkpoint_every": 10**9,
            "lr_step": 10**9, "val_episodes": 10**6, "test_episodes": 10**6,
            "seed": 2**63 - 1, "eval_seed": 2**63 - 1, "inner_lr": 1e3, "meta_lr": 1e3,
            "time_budget_s": 1e9}
#: the most pixels (or sinusoid points) one meta-step's tasks may hold: 2^31 floats, 8 GiB
MAX_STEP_ELEMENTS = 2**31
#: the smallest image side the convolutional models take (four halvings leave one pixel)
MIN_IMAGE_SIZE = 16


def _check(config: TrainConfig) -> None:
    """Every field checked for sense, so that a bad value stops a run before it touches a file."""
    def fail(name: str, rule: str, flag: str | None = None) -> None:
        flag = flag or "--" + name.replace("_", "-")
        raise ConfigError(f"{name} {rule}, got {getattr(config, name)!r} (set it with {flag})")

    if not isinstance(config.algorithm, str):
        fail("algorithm", "must be the name of an algorithm")
    unset = _unset_defaults(config)
    if unset:  # checked with the values the run will use
        dataclasses.replace(config, **unset)
        return

    spec = _spec(config.dataset)
    if spec.path and _SCAN_FOLDERS.get():
        _check_folder(config, spec)
    _check_algorithm(config.algorithm, config.extra, config.dataset, spec)
    integers = ("ways", "shots", "queries", "meta_batch", "inner_steps", "iterations", "lr_step",
                "val_every", "val_episodes", "log_every", "eval_batch", "eval_seed", "test_episodes",
                "seed", "test_inner_steps", "test_ways", "test_queries", "test_shots", "hidden", "channels",
                "image_size",
                "checkpoint_every")
    for name in integers:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            fail(name, "must be a whole number")
    at_least_one = ("ways", "shots", "queries", "meta_batch", "iterations", "val_every",
                    "val_episodes", "log_every", "eval_batch", "lr_step", "test_queries", "test_shots", "hidden",
                    "image_size", "checkpoint_every")
    for name in at_least_one:
        value = getattr(config, name)
        if value is not None and value < 1:
            fail(name, "must be >= 1")
    for name in ("inner_steps", "test_inner_steps", "test_episodes", "seed", "eval_seed"):
        value = getattr(config, name)
        if value is not None and value < 0:
            fail(name, "must be >= 0")
    for name, ceiling in CEILINGS.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and value > ceiling:
            fail(name, f"must be at most {ceiling:,g} (a larger value is taken as a typo: it would "
                       "exhaust memory or time, or overflow)", "--time-budget" if name == "time_budget_s" else None)
    images = not spec.regression
    if config.image_size is not None and images and config.image_size < MIN_IMAGE_SIZE:
        fail("image_size", f"must be at least {MIN_IMAGE_SIZE} (the convolutional models halve it four times)")
    _check_step_size(config)
    for name in ("ways", "test_ways"):
        value = getattr(config, name)
        if value is not None and images and value < 2:
            fail(name, "must be >= 2 (a classification task needs two classes)")
    for name in ("inner_lr", "meta_lr"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(name, "must be a finite number")
    if config.inner_lr < 0:
        fail("inner_lr", "must be >= 0 (a negative step climbs the loss)")
    if not config.meta_lr > 0:
        fail("meta_lr", "must be > 0")
    if config.time_budget_s is not None and not (
            isinstance(config.time_budget_s, (int, float)) and config.time_budget_s > 0
            and math.isfinite(config.time_budget_s)):
        fail("time_budget_s", "must be a positive number of seconds", "--time-budget")
    if config.folder_classes is not None and not (
            spec.split_classes is not None and isinstance(config.folder_classes, dict)
            and set(config.folder_classes) <= {"train", "val", "test"}
            and all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                    for v in config.folder_classes.values())):
        fail("folder_classes", "must map train/val/test to lists of class names, for a folder: dataset only",
             "the run's config.json; mtl records it when a run starts")
    if config.init is not None and not isinstance(config.init, str):
        fail("init", "must be the path of a checkpoint")
    if config.strategy not in STRATEGIES:
        fail("strategy", f"must be one of {', '.join(STRATEGIES)}")
    if config.optimizer not in ("adam", "sgd"):
        fail("optimizer", "must be 'adam' or 'sgd'")
    if config.lr_schedule not in ("constant", "linear", "cosine", "step"):
        fail("lr_schedule", "must be constant, linear, cosine or step")
    if config.model is not None and config.model not in MODELS:
        fail("model", f"must be one of {', '.join(MODELS)}")
    if config.channels is not None and config.channels not in (1, 3):
        fail("channels", "must be 1 (grayscale) or 3 (RGB)")
    if config.channels is not None and config.channels not in spec.channels:
        fail("channels", f"must be {' or '.join(map(str, spec.channels))} for {spec.name}"
             if spec.channels else f"is for images, and {spec.name} has none: drop it")
    if config.model is not None and config.model not in spec.models:
        raise ConfigError(f"model {config.model!r} does not fit dataset {config.dataset!r}: use "
                          f"{' or '.join(spec.models)}")
    _check_episodes(config, spec)
    if not isinstance(config.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        fail("device", "must be auto, cpu, cuda or cuda:N")


def _check_step_size(config: TrainConfig) -> None:
    """One meta-step's tasks fit in `MAX_STEP_ELEMENTS` floats (checked before any allocation)."""
    defaults = config.spec.defaults()
    side = config.image_size or defaults["image_size"] or 1
    channels = config.channels or defaults["channels"] or 1
    ways = 1 if config.spec.regression else config.ways
    elements = config.meta_batch * ways * (config.shots + config.queries) * channels * side * side
    if elements > MAX_STEP_ELEMENTS:
        raise ConfigError(
            f"one meta-step would hold {elements:,} input values (--meta-batch {config.meta_batch} x "
            f"{ways} ways x ({config.shots} shots + {config.queries} queries) x {channels} x {side} x "
            f"{side}), more than {MAX_STEP_ELEMENTS:,}: lower --meta-batch, --shots, --queries or "
            "--image-size")


def _check_folder(config: TrainConfig, spec: DatasetSpec) -> None:
    """A ``NAME:PATH`` dataset names its folder, and the folder is laid out as class folders."""
    path = parse_name(config.dataset)[1]
    if path is None:
        raise ConfigError(f"--dataset {spec.name} needs its folder: --dataset {spec.name}:PATH")
    try:
        spec.split_classes(path)
    except DataError as error:
        raise ConfigError(f"--dataset {config.dataset}: {error}") from None


def _check_episodes(config: TrainConfig, spec: DatasetSpec) -> None:
    """Each split the run samples from has enough classes and images for its episodes (datasets
    whose sizes are known only once loaded are checked then, by the episode sampler)."""
    if spec.regression:
        return
    test = lambda v, d: d if v is None else v  # noqa: E731 - the resolved value
    phases = [("train", "ways", config.ways, "shots", config.shots, "queries", config.queries)]
    evaluation = ("test-ways", test(config.test_ways, config.ways), "test-shots",
                  test(config.test_shots, config.shots), "test-queries",
                  test(config.test_queries, config.queries))
    phases.append(("val", *evaluation))
    if config.test_episodes:
        phases.append(("test", *evaluation))
    for split, ways_flag, ways, shots_flag, shots, queries_flag, queries in phases:
        where = f"{config.dataset} {split!r}"
        classes = spec.train_classes(config.rotations) if split == "train" else spec.splits.get(split)
        if classes is not None and ways > classes:
            hint = ("; or keep the 90-degree rotations as classes (drop --no-rotations)"
                    if split == "train" and spec.rotations and not config.rotations else "")
            raise ConfigError(f"{ways}-way tasks need {ways} classes but {where} has {classes}: "
                              f"use --{ways_flag} {classes} or fewer{hint}")
        if spec.per_class is not None and shots + queries > spec.per_class:
            raise ConfigError(f"--{shots_flag} {shots} + --{queries_flag} {queries} = {shots + queries} "
                              f"images per class, but {where} has {spec.per_class} per class: lower "
                              f"them so that they add up to at most {spec.per_class}")


def _check_algorithm(name: str, extra: dict[str, Any], dataset: str, spec: DatasetSpec) -> None:
    from mtl.algorithms import ALGORITHMS, algorithm_class  # the registry (imported when a config is made)

    if not isinstance(extra, dict):
        raise ConfigError(f"extra must be a dict of algorithm settings, got {type(extra).__name__}")
    cls = algorithm_class(name)
    if spec.regression and not getattr(cls, "REGRESSION", True):
        regressors = sorted(n for n, c in ALGORITHMS.items() if getattr(c, "REGRESSION", True)
                            and not getattr(c, "CONFIG_SETTINGS", ()) and n != "pretrain")
        raise ConfigError(f"--algorithm {name} only classifies, and {dataset} is regression: use one of "
                          f"{', '.join(regressors)} for --dataset {dataset}, or an image dataset for {name}")
    allowed = _constructor_settings(cls)
    if allowed is None:
        return  # the class takes any keyword
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise ConfigError(f"--set {unknown[0]}=... is not a setting of --algorithm {name}; its "
                          f"settings: {', '.join(sorted(allowed)) or 'none'}")


#: set by the engine for every algorithm (fields of TrainConfig), never through ``extra``
_ENGINE_SETTINGS = {"self", "model", "inner_steps", "inner_lr", "first_order", "strategy",
                    "loss_fn"}


def _constructor_settings(cls: type) -> set[str] | None:
    """The keywords ``cls`` accepts beyond the engine's own (None: it accepts any keyword)."""
    import inspect

    import torch.nn

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (torch.nn.Module, object) or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    else:
        if not names:
            return None
    names |= set(cls.CONFIG_SETTINGS)
    return names - _ENGINE_SETTINGS


# --- presets -------------------------------------------------------------------------------------
# Paper protocols. "queries": MAML's own code used K query images per class on Omniglot; we use 15
# everywhere (more signal per test episode, same task distribution); see RESULTS.md.
_OMNIGLOT_5W = dict(dataset="omniglot", ways=5, queries=15, meta_batch=32, inner_steps=1,
                    inner_lr=0.4, test_inner_steps=3, meta_lr=1e-3, iterations=60_000,
                    val_every=1000, val_episodes=200)
_OMNIGLOT_20W = dict(dataset="omniglot", ways=20, queries=15, meta_batch=16, inner_steps=5,
                     inner_lr=0.1, test_inner_steps=5, meta_lr=1e-3, iterations=60_000,
                     val_every=1000, val_episodes=200)
_MINI = dict(dataset="mini-imagenet", ways=5, queries=15, inner_steps=5, inner_lr=0.01,
             test_inner_steps=10, meta_lr=1e-3, iterations=60_000, val_every=1000,
             val_episodes=200, eval_batch=8)

PRESETS: dict[str, dict[str, Any]] = {
    # MAML, Finn et al. 2017, Table 1
    "maml-omniglot-5w1s": dict(_OMNIGLOT_5W, algorithm="maml", shots=1),
    "maml-omniglot-5w5s": dict(_OMNIGLOT_5W, algorithm="maml", shots=5),
    "maml-omniglot-20w1s": dict(_OMNIGLOT_20W, algorithm="maml", shots=1),
    "maml-omniglot-20w5s": dict(_OMNIGLOT_20W, algorithm="maml", shots=5),
    "maml-miniimagenet-5w1s": dict(_MINI, algorithm="maml", shots=1, meta_batch=4),
    "maml-miniimagenet-5w5s": dict(_MINI, algorithm="maml", shots=5, meta_batch=2),
    "fomaml-omniglot-5w1s": dict(_OMNIGLOT_5W, algorithm="fomaml", shots=1, first_order=True),
    "fomaml-miniimagenet-5w1s": dict(_MINI, algorithm="fomaml", shots=1, meta_batch=4, first_order=True),
    "fomaml-miniimagenet-5w5s": dict(_MINI, algorithm="fomaml", shots=5, meta_batch=2, first_order=True),
    # Reptile, Nichol et al. 2018, as the openai/supervised-reptile README's commands for
    # transductive 1-shot 5-way run it at revision 0487665 (Omniglot: "--inner-batch 25
    # --inner-iters 3 --meta-batch 10 --meta-iters 100000 --eval-batch 25 --eval-iters 5
    # --train-shots 15 --learning-rate 0.001 --meta-step 1 --meta-step-final 0"): inner Adam
    # (beta1 = 0) on mini-batches drawn from the task's training shots (more shots per class at
    # training than at test: "train-shots"), outer step size 1 annealed linearly to 0 (SGD on the
    # pseudo-gradient), more inner iterations at test; batch norm on each task's own statistics,
    # as every Conv4 here. The README's final revision (5d5589c) lists another Omniglot command
    # for the same setting: 5 Adam steps on batches of 10 from 10 training shots, meta-batch 5, 50
    # test-time steps. Adam's state starts afresh for each task (the reference code carries it
    # across tasks).
    "reptile-omniglot-5w1s": dict(dataset="omniglot", algorithm="reptile", ways=5, shots=15,
                                  test_shots=1, queries=5, meta_batch=10, inner_steps=3,
                                  inner_lr=1e-3, test_inner_steps=5, optimizer="sgd", meta_lr=1.0,
                                  lr_schedule="linear", iterations=100_000, val_every=2000,
                                  val_episodes=200,
                                  extra={"inner_optimizer": "adam", "inner_batch": 25}),
    "reptile-miniimagenet-5w1s": dict(dataset="mini-imagenet", algorithm="reptile", ways=5, shots=15,
                                      test_shots=1, queries=15, meta_batch=10, inner_steps=15,
                                      inner_lr=1e-3, test_inner_steps=10, optimizer="sgd",
                                      meta_lr=1.0, lr_schedule="linear", iterations=100_000,
                                      val_every=2000, val_episodes=200, eval_batch=8,
                                      extra={"inner_optimizer": "adam", "inner_batch": 5}),
    # ProtoNets, Snell et al. 2017: Conv4-64, 30-way (1-shot) / 20-way (5-shot) training episodes,
    # 15 queries, Adam 1e-3 halved every 2000 episodes; tested 5-way. One task per step.
    "protonet-miniimagenet-5w1s": dict(dataset="mini-imagenet", algorithm="protonet", ways=30,
                                       test_ways=5, shots=1, queries=15, meta_batch=1, inner_steps=0,
                                       inner_lr=0.0, hidden=64, lr_schedule="step", lr_step=2000,
                                       iterations=40_000, val_every=1000, val_episodes=200),
    "protonet-miniimagenet-5w5s": dict(dataset="mini-imagenet", algorithm="protonet", ways=20,
                                       test_ways=5, shots=5, queries=15, meta_batch=1, inner_steps=0,
                                       inner_lr=0.0, hidden=64, lr_schedule="step", lr_step=2000,
                                       iterations=40_000, val_every=1000, val_episodes=200),
    # MAML section 5.1: K=10 points, MLP 1-40-40-1, one inner step of 0.01, meta-batch 25, 70k steps.
    "maml-sinusoid": dict(dataset="sinusoid", algorithm="maml", shots=10, queries=10, meta_batch=25,
                          inner_steps=1, inner_lr=0.01, test_inner_steps=10, meta_lr=1e-3,
                          iterations=70_000, val_every=5000, val_episodes=600, eval_batch=100),
    # Its baseline: the same MLP pretrained on all tasks jointly, fine-tuned by the same SGD steps.
    "joint-sinusoid": dict(dataset="sinusoid", algorithm="joint", shots=10, queries=10, meta_batch=25,
                           inner_steps=1, inner_lr=0.01, test_inner_steps=10, meta_lr=1e-3,
                           iterations=70_000, val_every=5000, val_episodes=600, eval_batch=100),
    # --- small profiles for 2 CPU cores (lessons, CI-sized checks); see RESULTS.md ---
    # vmap on a CPU too: for a 1-40-40-1 MLP the per-task loop's overhead is most of a meta-step
    # (benchmarks/README.md, "Tiny networks")
    "cpu-maml-sinusoid": dict(dataset="sinusoid", algorithm="maml", shots=10, queries=10,
                              meta_batch=25, inner_steps=1, inner_lr=0.01, test_inner_steps=10,
                              meta_lr=1e-3, iterations=8000, val_every=2000, val_episodes=100,
                              eval_batch=100, time_budget_s=120, device="cpu", strategy="vmap"),
    "cpu-joint-sinusoid": dict(dataset="sinusoid", algorithm="joint", shots=10, queries=10,
                               meta_batch=25, inner_steps=1, inner_lr=0.01, test_inner_steps=10,
                               meta_lr=1e-3, iterations=8000, val_every=2000, val_episodes=100,
                               eval_batch=100, time_budget_s=120, device="cpu"),
    "cpu-maml-omniglot-5w1s": dict(dataset="omniglot", algorithm="maml", ways=5, shots=1, queries=5,
                                   meta_batch=16, inner_steps=1, inner_lr=0.4, test_inner_steps=3,
                                   hidden=32, meta_lr=3e-3, iterations=1500, val_every=250,
                                   val_episodes=100, eval_batch=32, time_budget_s=600, device="cpu"),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset as a `TrainConfig`, with ``overrides`` applied (``preset`` field set). With
    another ``algorithm`` whose ``DEFAULTS`` fix its inner loop (ProtoNet, in-context: none), the
    preset's inner-loop settings are left to that algorithm; its budget and episodes are kept."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    values = dict(PRESETS[name], preset=name)
    algorithm = overrides.get("algorithm")
    if algorithm and algorithm != values.get("algorithm") and "inner_steps" in algorithm_defaults(algorithm):
        # another algorithm on this preset's budget that fixes its own inner loop (e.g. ProtoNet: none)
        for field in INNER_LOOP_FIELDS:
            values.pop(field, None)
    values.update(overrides)
    return TrainConfig.from_dict(values)
