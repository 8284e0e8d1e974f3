"""Meta-learning algorithms, one short file each; ``ALGORITHMS`` maps a name to its class.

Every class is built as ``cls(model, *, inner_steps, inner_lr, first_order=False,
strategy="auto", **extra)`` and offers ``meta_gradient(batch)`` and ``predict(batch)`` (see
``base.py``).
"""
from __future__ import annotations

from mtl.algorithms.anil import ANIL
from mtl.algorithms.base import MetaLearner
from mtl.algorithms.fomaml import FOMAML
from mtl.algorithms.maml import MAML
from mtl.algorithms.metasgd import MetaSGD
from mtl.algorithms.protomaml import ProtoMAML
from mtl.algorithms.protonet import ProtoNet
from mtl.algorithms.reptile import Reptile

#: name -> class, as used by ``python -m mtl train --algorithm NAME``.
ALGORITHMS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "reptile": Reptile,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "protonet": ProtoNet,
    "protomaml": ProtoMAML,
}
# Meta-transfer learning: pre-training, Scaling & Shifting, baselines on the pre-trained net;
# the sinusoid paper's joint-training baseline.
from mtl.algorithms.meta_transfer import MetaTransfer  # noqa: E402
from mtl.algorithms.finetune import BASELINES as _PRETRAINED_BASELINES  # noqa: E402
from mtl.pretrain import Pretrain  # noqa: E402

from mtl.baselines import BASELINES as _JOINT  # noqa: E402

ALGORITHMS.update({"pretrain": Pretrain, "mtl": MetaTransfer, **_PRETRAINED_BASELINES, **_JOINT})


def register_algorithm(name: str, cls: type) -> None:
    """Make ``name`` usable as ``--algorithm name`` (and in a ``TrainConfig``) without editing mtl."""
    ALGORITHMS[name] = cls


def algorithm_class(name: str) -> type:
    """The class registered as ``name``; ``ConfigError`` naming the choices otherwise."""
    from mtl.errors import ConfigError

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]

__all__ = ["ALGORITHMS", "register_algorithm", "algorithm_class", "MetaLearner", "MAML", "FOMAML",
           "Reptile", "ANIL", "MetaSGD", "ProtoNet", "ProtoMAML"]
