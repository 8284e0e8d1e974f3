"""`python -m mtl course run`: execute every lesson top to bottom, as a teacher does before a workshop.

Each lesson runs in a fresh kernel (nbclient), in order, with a progress bar over its cells.
Executed copies (``.ipynb``) and HTML pages go to ``--out``; ``--inplace`` also writes the executed
notebook back over ``notebooks/NN_*.ipynb``, which is how the committed outputs are refreshed:
execution counts in order, no timing or widget-state metadata.

    python -m mtl course run                        # CPU profile, every lesson -> course-out/
    python -m mtl course run --profile gpu          # paper-sized budgets (needs a GPU; untested end to end)
    python -m mtl course run --lessons 01 03        # some lessons only
    python -m mtl course run --inplace --no-html    # refresh the committed outputs
    python -m mtl course exercises                  # notebooks/exercises/: solutions blanked

A lesson marks a solution cell with the comment ``# SOLUTION`` on its first line; ``exercises``
replaces such a cell's body by a ``# Your turn`` stub.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

from mtl.errors import LessonError
from mtl.io import atomic_write_text

__all__ = ["find_lessons", "execute_lesson", "clean_notebook", "blank_solutions"]

#: the repository's lesson folder (the package is installed editable, next to it)
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SOLUTION_MARK = "# SOLUTION"
_TRANSIENT_CELL_KEYS = ("execution", "collapsed", "scrolled", "ExecuteTime")


def find_lessons(folder: Path, selection: list[str] | None = None) -> list[Path]:
    """The lessons ``NN_*.ipynb`` in ``folder``, in order; ``selection`` filters by name prefix."""
    lessons = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not lessons:
        raise LessonError(f"no lessons (NN_*.ipynb) in {folder}: run from the repository, or pass --notebooks")
    if selection:
        chosen = [p for p in lessons if any(p.name.startswith(s) for s in selection)]
        missing = [s for s in selection if not any(p.name.startswith(s) for p in lessons)]
        if missing:
            names = ", ".join(p.stem for p in lessons)
            raise LessonError(f"no lesson matches {missing}; choose among: {names}")
        return chosen
    return lessons


def clean_notebook(nb):
    """Drop what a run adds but a committed lesson should not hold (timings, widget state, ...).

    Execution counts are kept (they are 1, 2, 3... after a clean run); returns ``nb``.
    """
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        for key in _TRANSIENT_CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("transient", None)
    return nb


def _allow_marked_errors(nb) -> list:
    """Cells that nbval expects to raise (``# NBVAL_RAISES_EXCEPTION``) get nbclient's ``raises-exception``
    tag for the run; returns them so that the tag can be removed afterwards (nbval warns about both)."""
    tagged = []
    for cell in nb.cells:
        if cell.cell_type == "code" and any(line.strip().lstrip("#").strip() == "NBVAL_RAISES_EXCEPTION"
                                            for line in cell.source.splitlines()):
            tags = cell.metadata.setdefault("tags", [])
            if "raises-exception" not in tags:
                tags.append("raises-exception")
                tagged.append(cell)
    return tagged


def execute_lesson(path: Path, *, timeout: int = 1800, progress: bool = True, kernel_name: str = "python3"):
    """Run one lesson in a fresh kernel (working directory: the lesson's folder); returns the notebook.

    Raises ``LessonError`` naming the failing cell when a cell raises unexpectedly.
    """
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    tagged = _allow_marked_errors(nb)
    n_code = sum(1 for c in nb.cells if c.cell_type == "code")
    bar = tqdm(total=n_code, desc=path.stem, unit="cell", disable=not progress, leave=True)
    sockets = tempfile.TemporaryDirectory(prefix="mtl-kernel-")
    # IPC sockets in a private folder: a local kernel needs no TCP port (nor its warning)
    manager = KernelManager(kernel_name=kernel_name, transport="ipc",
                            ip=str(Path(sockets.name) / "kernel"))
    client = NotebookClient(
        nb, km=manager, timeout=timeout, kernel_name=kernel_name, record_timing=False,
        store_widget_state=False, resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=lambda **_: bar.update(1),
    )
    try:
        client.execute()
    except CellExecutionError as error:
        raise LessonError(f"{path.name} failed:\n{error}\nFix the lesson (or mtl), then re-run "
                          f"`python -m mtl course run --lessons {path.name[:2]}`.") from None
    finally:
        bar.close()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
        sockets.cleanup()
    for cell in tagged:
        cell.metadata["tags"].remove("raises-exception")
        if not cell.metadata["tags"]:
            del cell.metadata["tags"]
    return clean_notebook(nb)


#: MathJax 2 as shipped by the ``jupyter-server-mathjax`` package, copied beside the HTML copies
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"


def _local_mathjax(folder: Path) -> str:
    """Copy MathJax into ``folder/mathjax`` (once); the relative URL an HTML copy loads it from.

    HTML copies are opened offline (a projector, a train): math must not come from a CDN.
    """
    import jupyter_server_mathjax

    target = folder / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", target,
                        dirs_exist_ok=True)
    return f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _static_widgets(nb):
    """Copy of ``nb`` in which an output that is a widget view with a figure (``image/png``, as
    ``mtl.course.widgets`` explorers give) shows the figure: an HTML copy has no kernel (nor,
    offline, the widget library from a CDN) to draw the widget with."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and "image/png" in data:
                del data[WIDGET_VIEW]
    return nb


def _export_html(nb, destination: Path) -> None:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(mathjax_url=_local_mathjax(destination.parent))
    body, _ = exporter.from_notebook_node(_static_widgets(nb))
    atomic_write_text(destination, body)


def blank_solutions(nb):
    """Copy of ``nb`` whose ``# SOLUTION`` cells are replaced by a stub, outputs cleared."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        lines = cell.source.splitlines()
        if lines and lines[0].strip().upper().startswith(SOLUTION_MARK):
            # Keep the signature lines (def/return annotations) the checker needs, drop the body.
            header = [ln for ln in lines[1:] if ln.startswith("def ")]
            stub = [f"{h}\n    raise NotImplementedError('your turn')" for h in header]
            cell.source = "# Your turn: replace NotImplementedError by your code, then run the check below.\n" + \
                "\n\n".join(stub or ["..."])
    return clean_notebook(nb)
