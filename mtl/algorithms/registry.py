"""The one registry of learners: name -> class, as ``--algorithm NAME`` and ``TrainConfig`` use it."""
from __future__ import annotations

from mtl.algorithms.anil import ANIL
from mtl.algorithms.base import Learner
from mtl.algorithms.fomaml import FOMAML
from mtl.algorithms.in_context import InContext
from mtl.algorithms.maml import MAML
from mtl.algorithms.metasgd import MetaSGD
from mtl.algorithms.protomaml import ProtoMAML
from mtl.algorithms.protonet import ProtoNet
from mtl.algorithms.reptile import Reptile
from mtl.algorithms.transfer.finetune import FineTuneAll, FineTuneHead, LinearProbe, NearestCentroid
from mtl.algorithms.transfer.joint import JointTraining
from mtl.algorithms.transfer.meta_transfer import MetaTransfer
from mtl.algorithms.transfer.pretrain import Pretrain
from mtl.errors import ConfigError

#: name -> class: the meta-learners, then pre-training, meta-transfer learning and the baselines
ALGORITHMS: dict[str, type[Learner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "reptile": Reptile,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "protonet": ProtoNet,
    "protomaml": ProtoMAML,
    "in-context": InContext,
    "pretrain": Pretrain,
    "meta-transfer": MetaTransfer,
    "finetune-head": FineTuneHead,
    "finetune-all": FineTuneAll,
    "linear-probe": LinearProbe,
    "nearest-centroid": NearestCentroid,
    "joint": JointTraining,
}


#: other names of registered algorithms: alias -> name (``mtl``, the package's name, is meta-transfer's old name)
ALIASES: dict[str, str] = {"mtl": "meta-transfer"}


def register_algorithm(name: str, cls: type[Learner]) -> None:
    """Make ``name`` usable as ``--algorithm name`` (and in a ``TrainConfig``) without editing mtl.

    ``cls`` implements the contract of ``mtl.algorithms.base.Learner`` (subclass it)."""
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise ConfigError(f"register_algorithm({name!r}, ...) needs a subclass of mtl.algorithms.Learner "
                          f"(the contract the engine calls), got {cls!r}")
    ALGORITHMS[name] = cls


def algorithm_class(name: str) -> type[Learner]:
    """The class registered as ``name`` (or as the name ``name`` is an alias of, `ALIASES`);
    ``ConfigError`` naming the choices otherwise."""
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
