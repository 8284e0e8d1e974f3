"""pytest (nbval) configuration for the lessons.

``exercises/`` holds the workshop copies of the lessons, with the solution cells blanked
(``python -m mtl course exercises``): they raise ``NotImplementedError`` by design, so nbval must
not run them. Their sync with the lessons is tested in ``tests/test_exercise_copies.py``.

The lessons show progress bars when a person runs them; their stored outputs are made without
(``python -m mtl course run`` sets ``MTL_PROGRESS=0``), so the kernels nbval starts, which inherit
this process's environment, run without them too.
"""
import os

os.environ.setdefault("MTL_PROGRESS", "0")

collect_ignore = ["exercises"]
