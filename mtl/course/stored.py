"""Outputs recorded on a machine that has a dataset, replayed on one that has not.

mini-ImageNet cannot be downloaded for you, yet lessons show it. A cell that needs it is written as::

    try:
        mini = load_dataset("mini-imagenet", "val", progress=False)
    except DataError:  # not on this machine
        mini = None
        stored.replay("02_tasks_and_episodes.mini-imagenet-episode")
    if mini is not None:
        ...  # the real work, whose outputs were recorded

:func:`replay` prints the recorded text and displays the recorded figures (the same image and
``text/plain``), so the lesson reads the same and strict nbval compares equal outputs either way.
The recording is ``stored/<lesson>.<name>.json``: the nbformat outputs of the lesson cell that calls
``replay("<lesson>.<name>")``, copied from the executed lesson by :func:`record` (run it after
re-executing the lesson with the dataset; ``tests/test_stored_outputs.py`` fails while they differ).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mtl.errors import MTLError

FOLDER = Path(__file__).with_name("stored")
_LESSONS = Path(__file__).resolve().parents[2] / "notebooks"


def path(key: str) -> Path:
    """The recording of ``key`` (``"<lesson stem>.<name>"``)."""
    return FOLDER / f"{key}.json"


def replay(key: str) -> None:
    """Print the recorded streams and display the recorded figures of ``key``, in their order."""
    if not path(key).is_file():
        raise MTLError(f"no recorded output {path(key)}: reinstall mtl from a complete checkout")
    from IPython.display import display

    for output in json.loads(path(key).read_text()):
        if output["output_type"] == "stream":
            stream = sys.stderr if output["name"] == "stderr" else sys.stdout
            stream.write("".join(output["text"]))
            stream.flush()
        else:
            data = {mime: "".join(value) if isinstance(value, list) else value
                    for mime, value in output["data"].items()}
            display(data, raw=True, metadata=output.get("metadata") or None)


def cell_outputs(key: str, lessons: Path = _LESSONS) -> list[dict]:
    """The outputs, as committed, of the lesson cell that calls ``replay(key)``."""
    lesson = lessons / f"{key.split('.', 1)[0]}.ipynb"
    call = f'stored.replay("{key}")'
    cells = [c for c in json.loads(lesson.read_text())["cells"] if call in "".join(c["source"])]
    if len(cells) != 1:
        raise MTLError(f"{lesson} has {len(cells)} cells calling {call}, expected 1")
    return cells[0]["outputs"]


def record(key: str, lessons: Path = _LESSONS) -> Path:
    """Copy the committed outputs of the cell that calls ``replay(key)`` into its recording."""
    FOLDER.mkdir(exist_ok=True)
    path(key).write_text(json.dumps(cell_outputs(key, lessons), indent=1) + "\n")
    return path(key)
