"""mtl: the companion package of the meta-learning course.

The two functions every lesson starts from::

    mtl.adapt(model, params, x, y, *, steps, lr, ...)          # inner loop, one task
    mtl.maml_loss(model, params, sx, sy, qx, qy, *, steps, lr)  # outer objective, a batch of tasks

The layers, each importing only those below it::

    cli/         python -m mtl COMMAND: one module per sub-command
    course/      what lessons show and check (plots, widgets, exercises, comparisons, runner)
    engine/      config, build, the training loop, run folder, checkpoints, evaluation
    algorithms/  the learner contract, the registry, one file per method; transfer/ for pre-training
    core/ models/ data/   the inner loop and heads; the networks; datasets and episodes
    errors.py io.py       every exception; atomic writes and the progress switch
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["adapt", "maml_loss", "TaskBatch", "FewShotClassifier", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import mtl` stays cheap (the CLI imports only what a command needs).
    if name in ("adapt", "maml_loss"):
        from mtl.core import inner

        return getattr(inner, name)
    if name == "TaskBatch":
        from mtl.data.episodes import TaskBatch

        return TaskBatch
    if name == "FewShotClassifier":
        from mtl.engine.classifier import FewShotClassifier

        return FewShotClassifier
    raise AttributeError(f"module 'mtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that dir(), completion and documentation tools see them.
    return sorted(set(globals()) | set(__all__))
