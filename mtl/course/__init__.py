"""What the lessons show and check: nothing here trains a model the engine could not.

- ``quadratic.py``: the bilevel objective in closed form (lesson 01).
- ``viz.py``, ``widgets.py``: plots and JupyterLab widgets.
- ``exercises.py``: the "Your turn" checkers.
- ``compare.py``: the capstone's table: memory, parameter counts, paired differences, results files.
- ``recorded.py``: the recorded runs and pre-trained backbone the lessons read instead of training.
- ``baselines.py``: the embedding rules with their test-time settings chosen on validation.
- ``pipeline.py``: the meta-transfer pipeline (pre-train, Scaling & Shifting, baselines) in one call.
- ``runner.py``: run every lesson top to bottom (``python -m mtl course``), workshop copies.
"""
