"""The engine: what turns a config into a trained, evaluated, checkpointed learner.

- ``config.py``: ``TrainConfig`` (every field checked when made) and the named presets.
- ``build.py``: the model, learner and device a config describes; ``load_learner`` (a checkpoint's).
- ``train.py``: the one training loop of every algorithm, pre-training included (validation,
  checkpoints, metrics, resume).
- ``rundir.py``: the run folder (check before act, ``--overwrite`` without loss).
- ``checkpoint.py``: every checkpoint: payload, file names, rotation, writing and reading
  (``weights_only=True``), every RNG state, a pre-training run's network.
- ``evaluate.py``: accuracy +- 95% interval on fixed, seeded episodes.
- ``distributed.py``: the same run under torchrun.
- ``classifier.py``: ``FewShotClassifier``, a trained learner adapted to a user's own images.
"""
