"""mtl: the companion package of the meta-learning course.

The two functions every lesson starts from::

    mtl.adapt(model, params, x, y, *, steps, lr, ...)          # inner loop, one task
    mtl.maml_loss(model, params, sx, sy, qx, qy, *, steps, lr)  # outer objective, a batch of tasks

Everything else lives in sub-modules: ``mtl.data`` (datasets, episodes), ``mtl.models``,
``mtl.algorithms`` (one file per method), ``mtl.train`` / ``mtl.evaluate`` (the engine),
``mtl.viz`` and ``mtl.widgets`` (what lessons show).
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["adapt", "maml_loss", "TaskBatch", "FewShotClassifier", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import mtl` stays cheap (the CLI imports only what a command needs).
    if name in ("adapt", "maml_loss"):
        from mtl import inner

        return getattr(inner, name)
    if name == "TaskBatch":
        from mtl.data.episodes import TaskBatch

        return TaskBatch
    if name == "FewShotClassifier":
        from mtl.classifier import FewShotClassifier

        return FewShotClassifier
    raise AttributeError(f"module 'mtl' has no attribute {name!r}")
