"""The learners: the contract (``base.Learner``), the registry, one short file per method.

Meta-learners (``cls(model, *, inner_steps, inner_lr, first_order=False, strategy="auto",
**extra)``): ``maml``, ``fomaml``, ``reptile``, ``anil``, ``metasgd``, ``protonet``,
``protomaml``, ``in-context`` (a transformer over the support set, no inner loop).
Learners on a pre-trained network (``transfer/``): ``pretrain``, ``meta-transfer``
(meta-transfer learning; ``mtl`` is an alias of it), the baselines ``finetune-head``,
``finetune-all``, ``linear-probe``,
``nearest-centroid``; and ``joint``, the sinusoid paper's baseline. ``ALGORITHMS``
(``registry.py``) maps each name to its class, ``ALIASES`` other names to those names.
"""
from __future__ import annotations

from mtl.algorithms.anil import ANIL
from mtl.algorithms.base import Learner, MetaLearner
from mtl.algorithms.fomaml import FOMAML
from mtl.algorithms.in_context import InContext
from mtl.algorithms.maml import MAML
from mtl.algorithms.metasgd import MetaSGD
from mtl.algorithms.protomaml import ProtoMAML
from mtl.algorithms.protonet import ProtoNet
from mtl.algorithms.registry import ALGORITHMS, ALIASES, algorithm_class, register_algorithm
from mtl.algorithms.reptile import Reptile

__all__ = ["ALGORITHMS", "ALIASES", "register_algorithm", "algorithm_class", "Learner", "MetaLearner", "MAML", "FOMAML",
           "Reptile", "ANIL", "MetaSGD", "ProtoNet", "ProtoMAML", "InContext"]
