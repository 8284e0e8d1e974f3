"""Comparisons the lessons print: paired verdicts, and the capstone's one row per method.

Two methods scored on the same episodes are compared episode by episode, and every lesson words
the result the same way (``verdict``: "ahead", "behind", "no difference detected")::

    p = paired("ProtoNet", protonet.scores, "MAML", maml.scores)
    print(p.sentence())   # ProtoNet - MAML: +3.9 points, 95% interval [+3.0, +4.8] over the same 300 episodes: ...

A row holds the test accuracy (mean +- 95% CI over fixed episodes, ``mtl.engine.evaluate``), the
training time, the memory one meta-step holds for its backward pass, and two parameter counts:
how many numbers are *meta-learned* (what the outer loop trains) and how many are *learned per
task* (what the inner loop, or the per-task solver, sets for each new task)::

    memory = backward_memory(lambda: learner.meta_gradient(batch))      # bytes
    row = Row.measure("MAML", learner, evaluation, train_s=summary.wall_time_s, memory_bytes=memory)
    print(format_table(rows))

Rows of the full (GPU) profile are not computed in a lesson: they are read from JSON files under
``results/`` that the project's CLI produced (``load_results``); each carries its provenance
(command, hardware, date). Where no such file exists the table says so and shows the command.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mtl.algorithms import Learner
from mtl.algorithms.base import numel
from mtl.errors import MTLError, ResultsError
from mtl.io import atomic_write_text, check_output_file

__all__ = ["Row", "backward_memory", "per_task_parameters", "meta_parameters", "paired_difference", "Paired",
           "paired", "verdict", "hardware", "format_table", "markdown_table", "load_results", "PlannedRun"]

#: the repository's results folder (the package is installed editable, next to it)
RESULTS = Path(__file__).resolve().parents[2] / "results"


def backward_memory(step: Callable[[], Any]) -> int:
    """Peak bytes allocated above the starting point while ``step()`` runs (e.g. one meta-gradient).

    On a GPU: ``torch.cuda.max_memory_allocated``. On a CPU: the memory events of
    ``torch.profiler`` (every allocation and free, in order), summed into a running total whose
    maximum is the peak. What dominates it is what a training step keeps for its backward pass: the
    activations, and for second-order MAML the inner loop's graph. It counts tensor allocations, not
    the process's memory, so it varies little between machines (allocator scratch space aside).
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    running = peak = 0
    for event in events:  # allocations (+) and frees (-), "[memory]" events: frees outside any op
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak)


@contextlib.contextmanager
def _native_stderr_silenced():
    """The profiler's C++ side logs start/stop lines on file descriptor 2; keep them out of lessons."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def meta_parameters(learner: nn.Module) -> int:
    """Numbers the outer loop trains: the learner's parameters that require grad (0 for baselines)."""
    return numel(p for p in learner.parameters() if p.requires_grad)


def per_task_parameters(learner: Learner, ways: int) -> int:
    """Numbers set anew for each task by adaptation (``ways``: N of the tasks), as the learner
    declares them (``Learner.per_task_parameters``).

    MAML, first-order MAML, Reptile, Meta-SGD and Proto-MAML adapt the whole network; ANIL only its
    head; ProtoNet and nearest centroid adapt nothing (a task is summarised by its class means,
    which are computed, not learned); fine-tuning the head, a linear probe and meta-transfer
    learning fit an ``N x D`` linear classifier and its bias; fine-tuning everything adapts the
    network too.
    """
    return learner.per_task_parameters(ways)


def paired_difference(scores_a, scores_b) -> tuple[float, float]:
    """``(mean, 95% half-width)`` of ``a - b`` episode by episode, for two methods scored on the same
    episodes. Its interval accounts for the shared episodes: tighter than the methods' own when an
    episode's difficulty is shared by both, no tighter when their errors fall on different episodes."""
    from mtl.engine.evaluate import confidence_interval

    a, b = list(scores_a), list(scores_b)
    if len(a) != len(b) or not a:
        raise MTLError(f"paired differences need the same episodes for both methods: got {len(a)} "
                       f"and {len(b)} scores")
    return confidence_interval([x - y for x, y in zip(a, b)])


#: the three words a paired interval supports, from the first method's side
AHEAD, BEHIND, NO_DIFFERENCE = "ahead", "behind", "no difference detected"


def verdict(mean: float, ci95: float) -> str:
    """What a paired difference ``a - b`` (its mean and 95% half-width) supports, from ``a``'s side:
    ``"ahead"`` when the whole interval is above 0, ``"behind"`` when it is below 0, else
    ``"no difference detected"`` (an interval that contains 0 does not show the methods equal: only
    that these episodes cannot tell them apart)."""
    if not (math.isfinite(mean) and math.isfinite(ci95)) or ci95 < 0:
        raise MTLError(f"a verdict needs a finite mean and a half-width >= 0, got {mean} and {ci95}")
    if mean - ci95 > 0:
        return AHEAD
    if mean + ci95 < 0:
        return BEHIND
    return NO_DIFFERENCE


@dataclass(frozen=True)
class Paired:
    """Method ``a`` against method ``b`` on the same ``n`` episodes: the mean of ``a - b`` and its
    95% half-width (``paired_difference``), with the verdict they support."""

    a: str
    b: str
    mean: float
    ci95: float
    n: int

    @property
    def verdict(self) -> str:
        """``"ahead"``, ``"behind"`` or ``"no difference detected"``, ``a`` against ``b``."""
        return verdict(self.mean, self.ci95)

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def phrase(self) -> str:
        """``"A ahead of B"``, ``"A behind B"`` or ``"no difference detected between A and B"``."""
        if self.verdict == AHEAD:
            return f"{self.a} ahead of {self.b}"
        if self.verdict == BEHIND:
            return f"{self.a} behind {self.b}"
        return f"no difference detected between {self.a} and {self.b}"

    def sentence(self, scale: float = 100.0, unit: str = "points", digits: int = 1) -> str:
        """One line: the difference (times ``scale``, in ``unit``), its interval, the episodes and the verdict."""
        f = lambda v: f"{scale * v:+.{digits}f}"  # noqa: E731
        return (f"{self.a} - {self.b}: {f(self.mean)} {unit}, 95% interval [{f(self.low)}, {f(self.high)}] "
                f"over the same {self.n} episodes: {self.phrase()}")


def paired(a: str, scores_a, b: str, scores_b) -> Paired:
    """``Paired`` for two methods named ``a`` and ``b``, scored on the same episodes (in the same order)."""
    scores_a, scores_b = list(scores_a), list(scores_b)
    mean, ci95 = paired_difference(scores_a, scores_b)
    return Paired(a, b, mean, ci95, len(scores_a))


#: Student's t, 97.5% quantile, for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile with ``df`` degrees of freedom (a table to 30, then the
    Cornish-Fisher expansion in ``1 / df`` to second order, within 0.001 of it)."""
    if df < 1:
        raise MTLError(f"a t interval needs at least 1 degree of freedom (two values), got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def over_seeds(differences) -> tuple[float, float]:
    """``(mean, 95% half-width)`` of a difference measured once per training seed (e.g. each seed's
    paired mean ``a - b``): the seed is the unit, so the half-width is Student's t with ``n - 1``
    degrees of freedom times the standard error over the ``n`` seeds. `verdict` reads it."""
    values = [float(d) for d in differences]
    if len(values) < 2:
        raise MTLError(f"an interval over seeds needs at least two seeds, got {len(values)}")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(n - 1) * sd / math.sqrt(n)


def hardware(threads: int | None = None) -> str:
    """A one-line description of this machine: GPU name, else CPU model and torch thread count
    (``threads``, the count a run used, else this process's)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = threads or torch.get_num_threads()
    return f"{cpu}, {threads} thread{'' if threads == 1 else 's'} (torch {torch.__version__})"


@dataclass
class Row:
    """One method on one benchmark. ``accuracy`` holds the test score: a fraction when ``metric``
    is ``"accuracy"``, the mean squared error when it is ``"mse"`` (regression); ``memory_bytes``
    may be None."""

    method: str
    dataset: str
    accuracy: float
    ci95: float
    episodes: int
    train_s: float
    memory_bytes: int | None
    meta_learned: int
    per_task: int
    source: str = "computed in this lesson"
    metric: str = "accuracy"
    provenance: dict[str, Any] = field(default_factory=dict)
    #: per-episode test scores (paired differences need them), and the validation curve: rows of
    #: the engine's metrics ``{"step", "accuracy", "elapsed_s", ...}``; None where not recorded
    scores: list[float] | None = field(default=None, repr=False)
    curve: list[dict[str, Any]] | None = field(default=None, repr=False)
    #: how the test-time inner steps were chosen, where they were: ``{"chosen": k, "validation":
    #: {steps: mean score}, "episodes": n validation episodes, "trained_default": the config's}``
    test_steps: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def measure(cls, method: str, learner: nn.Module, evaluation, *, train_s: float,
                memory_bytes: int | None, ways: int, dataset: str = "omniglot", **kwargs) -> "Row":
        """A row from a trained ``learner`` and its ``mtl.engine.evaluate.Evaluation``."""
        return cls(method=method, dataset=dataset, accuracy=evaluation.mean, ci95=evaluation.ci95,
                   episodes=evaluation.n, train_s=float(train_s), memory_bytes=memory_bytes,
                   meta_learned=meta_parameters(learner), per_task=per_task_parameters(learner, ways),
                   **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannedRun:
    """A full-profile row not measured yet: the command that produces its results file."""

    method: str
    dataset: str
    command: str


def load_results(folder: str | Path = RESULTS, pattern: str = "*.json") -> list[Row]:
    """Rows from the files ``folder/pattern`` matches, in name order
    (``{"row": {...Row fields...}, "provenance": {"command", "hardware", "date"}}``).

    Files without the three provenance fields are refused: a number without its command cannot
    be regenerated.
    """
    rows = []
    for path in sorted(Path(folder).glob(pattern)):
        try:
            payload = json.loads(path.read_text())
            provenance = payload["provenance"]
            missing = [k for k in ("command", "hardware", "date") if not provenance.get(k)]
            if missing:
                raise ResultsError(f"{path} has no {missing} in its provenance: add them (the command "
                                   "that produced it, the machine, the date) or delete the file")
            test_steps = payload.get("test_steps")
            if test_steps is not None:
                test_steps = {**test_steps, "validation": {int(k): v for k, v in test_steps["validation"].items()}}
            row = Row(**{**payload["row"], "source": str(path.name), "provenance": provenance,
                         "scores": payload.get("scores"), "curve": payload.get("curve"), "test_steps": test_steps})
        except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{path} is not a results file ({exc}); regenerate it with the command "
                               "written in its provenance, or delete it") from exc
        rows.append(row)
    return rows


def _validation_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The validation rows of a run's ``metrics.jsonl`` (what ``viz.learning_curves`` draws)."""
    rows = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "val":
            rows.append({k: row[k] for k in ("kind", "step", "loss", "accuracy", "ci95", "elapsed_s") if k in row})
    return rows


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else (f"{n / 1e3:.1f} k" if n >= 1e3 else str(n))


def format_table(rows: list[Row], planned: list[PlannedRun] = ()) -> str:
    """A fixed-width text table: accuracy +- CI, time, backward memory, meta-learned and per-task counts."""
    header = (f"{'method':<22} {'dataset':<14} {'accuracy (95% CI)':>18} {'episodes':>8} {'train':>8} "
              f"{'memory':>10} {'meta-learned':>12} {'per task':>9}  source")
    lines = [header, "-" * len(header)]
    for r in rows:
        if math.isnan(r.accuracy):
            acc = "-"
        elif r.metric == "mse":
            acc = f"mse {r.accuracy:.3g} +- {r.ci95:.2g}"
        else:
            acc = f"{100 * r.accuracy:5.1f} +- {100 * r.ci95:4.1f}%"
        lines.append(f"{r.method:<22} {r.dataset:<14} {acc:>18} {r.episodes:>8} {r.train_s:>7.0f}s "
                     f"{_size(r.memory_bytes):>10} {_count(r.meta_learned):>12} {_count(r.per_task):>9}  {r.source}")
    for p in planned:
        lines.append(f"{p.method:<22} {p.dataset:<14} {'not yet measured':>18}  ->  {p.command}")
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    """Recorded rows as a Markdown table: the score with its interval (and the test-time steps where
    they were chosen on validation), the episodes, the training steps and time, the machine, the
    date and the command each file names (what ``RESULTS.md`` shows)."""
    lines = ["| method | dataset | test score (95% CI) | episodes | training | machine | date | command |",
             "|---|---|---|---:|---|---|---|---|"]
    for r in rows:
        p = r.provenance
        score = (f"MSE {r.accuracy:.3g} ± {r.ci95:.2g}" if r.metric == "mse"
                 else f"{100 * r.accuracy:.1f} ± {100 * r.ci95:.1f} %")
        if r.test_steps:
            k = r.test_steps['chosen']
            score += f" ({k} test step{'' if k == 1 else 's'}, chosen on validation)"
        steps = f"{p['steps']:,} steps, " if p.get("steps") else ""
        lines.append(f"| {r.method} | {r.dataset} | {score} | {r.episodes} | {steps}{r.train_s:,.0f} s | "
                     f"{p['hardware']} | {p['date']} | `{' '.join(p['command'].split())}` |")
    return "\n".join(lines)


def record(run_dir: str | Path, *, method: str, command: str, out: str | Path | None = None,
           force: bool = False, weights: str | Path | None = None,
           choose_steps: Sequence[int] | None = None, select_episodes: int = 100) -> Path:
    """Write ``results/<run name>.json`` from a finished run folder (``summary.json`` with a test result).

    ``command`` is the command line that produced the run (provenance); the hardware and date are
    this machine's and today's, so record on the machine that trained, right after training.
    ``weights``: also export the model the test scored (the run's ``last.pt``) there, weights only
    (``mtl.engine.checkpoint.export_weights``). ``choose_steps``: test the run's model again, with
    the test-time inner step count among these that scores best on ``select_episodes`` validation
    episodes (`mtl.engine.evaluate.choose_inner_steps`), on the same test episodes; the file keeps
    the choice (``"test_steps"``). Existing files are replaced only with ``force=True``
    (`ResultsError` otherwise), and the targets and settings are checked before anything is read.
    """
    from datetime import datetime, timezone

    from mtl.engine.config import TrainConfig
    from mtl.engine.build import build_learner, load_learner

    run_dir = Path(run_dir).expanduser()
    target = check_output_file(Path(out) if out else RESULTS / f"{run_dir.name}.json", "the results file")
    if target.exists() and not force:
        raise ResultsError(f"{target} already exists (a recorded result): pass --force to replace it, "
                           "or --out FILE to record elsewhere")
    if weights is not None:
        weights = check_output_file(weights, "the exported weights")
        if weights.exists() and not force:
            raise ResultsError(f"{weights} already exists: pass --force to replace it, or choose another path")
    if choose_steps is not None:
        choose_steps = tuple(choose_steps)
        if not choose_steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in choose_steps):
            raise ResultsError(f"choose_steps must be whole numbers >= 0, got {choose_steps!r} "
                               "(e.g. --choose-steps 1,3,5,10)")
        if isinstance(select_episodes, bool) or not isinstance(select_episodes, int) or select_episodes < 1:
            raise ResultsError(f"select_episodes must be a whole number >= 1, got {select_episodes!r}")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{run_dir} has no readable summary.json ({exc}): train with "
                           "`python -m mtl train ... --test-episodes 600 --out RUN` first") from exc
    test = summary.get("test")
    if not test:
        raise ResultsError(f"{run_dir}/summary.json has no test result: train with --test-episodes 600")
    config = TrainConfig.from_saved(summary["config"], run_dir / "summary.json")
    learner = build_learner(config, torch.device("cpu"))
    chosen = None
    if choose_steps is not None:
        from mtl.engine.checkpoint import LAST
        from mtl.engine.evaluate import adapts, choose_inner_steps, evaluate

        if not adapts(learner, config.test_ways):
            raise ResultsError(f"{method} sets no weight per task, so it has no test-time inner steps to "
                               "choose: record it without --choose-steps")
        tested = load_learner(run_dir / LAST, "cpu")
        steps, on_val = choose_inner_steps(tested.learner, tested.config, choices=choose_steps,
                                           episodes=select_episodes, seed=config.eval_seed, progress=False)
        result = evaluate(tested.learner, tested.config, split="test", episodes=test["n"], seed=config.eval_seed,
                          inner_steps=steps, progress=False)
        test = {**test, "mean": result.mean, "ci95": result.ci95, "n": result.n, "scores": result.scores}
        chosen = {"chosen": steps, "validation": on_val, "episodes": select_episodes,
                  "trained_default": config.test_inner_steps}
    metric = test.get("metric", "mse" if config.regression else "accuracy")
    row = Row(method=method, dataset=config.dataset, accuracy=test["mean"], ci95=test["ci95"], episodes=test["n"],
              metric=metric,
              train_s=summary["wall_time_s"], memory_bytes=None, meta_learned=meta_parameters(learner),
              per_task=per_task_parameters(learner, config.test_ways))
    provenance = {"command": command, "hardware": hardware(summary.get("threads")),
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "run": str(run_dir),
                  "steps": summary["steps"], "stopped": summary["stopped"]}
    payload = {"row": {k: v for k, v in row.to_dict().items() if k not in ("source", "provenance", "scores", "curve")},
               "provenance": provenance, "scores": [round(float(v), 6) for v in test.get("scores", [])],
               "curve": _validation_curve(run_dir)}
    if chosen is not None:
        payload["test_steps"] = chosen
    if weights is not None:
        from mtl.engine.checkpoint import LAST, export_weights

        export_weights(run_dir / LAST, weights, force=True)
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return target
