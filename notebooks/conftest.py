"""pytest (nbval) configuration for the lessons.

``exercises/`` holds the workshop copies of the lessons, with the solution cells blanked
(``python -m mtl course exercises``): they raise ``NotImplementedError`` by design, so nbval must
not run them. Their sync with the lessons is tested in ``tests/test_exercise_copies.py``.
"""
collect_ignore = ["exercises"]
