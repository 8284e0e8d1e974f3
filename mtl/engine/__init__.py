"""The engine: what turns a config into a trained, evaluated, checkpointed learner.

- ``config.py``: ``TrainConfig`` (every field checked when made) and the named presets.
- ``build.py``: the model, learner and device a config describes.
- ``train.py``: the meta-training loop (validation, checkpoints, metrics, resume).
- ``rundir.py``: the run folder (check before act, ``--overwrite`` without loss).
- ``checkpoint.py``: the one checkpoint format (``weights_only=True``) and every RNG state.
- ``evaluate.py``: accuracy +- 95% interval on fixed, seeded episodes.
- ``distributed.py``: the same run under torchrun.
- ``classifier.py``: ``FewShotClassifier``, a trained learner adapted to a user's own images.
"""
