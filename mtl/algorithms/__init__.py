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
}
# Meta-transfer learning (issue 5): pre-training, Scaling & Shifting, baselines on the pre-trained net.
from mtl.algorithms.meta_transfer import MetaTransfer  # noqa: E402
from mtl.algorithms.finetune import BASELINES as _PRETRAINED_BASELINES  # noqa: E402
from mtl.pretrain import Pretrain  # noqa: E402

ALGORITHMS.update({"pretrain": Pretrain, "mtl": MetaTransfer, **_PRETRAINED_BASELINES})

__all__ = ["ALGORITHMS", "MetaLearner", "MAML", "FOMAML", "Reptile", "ANIL", "MetaSGD", "ProtoNet"]
