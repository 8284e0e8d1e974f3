"""Meta-learning algorithms, one short file each; ``ALGORITHMS`` maps a name to its class.

Every class is built as ``cls(model, *, inner_steps, inner_lr, first_order=False,
strategy="auto", **extra)`` and offers ``meta_gradient(batch)`` and ``predict(batch)`` (see
``base.py``).
"""
from __future__ import annotations

from mtl.algorithms.base import MetaLearner
from mtl.algorithms.fomaml import FOMAML
from mtl.algorithms.maml import MAML

#: name -> class, as used by ``python -m mtl train --algorithm NAME``.
ALGORITHMS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
}

__all__ = ["ALGORITHMS", "MetaLearner", "MAML", "FOMAML"]
