"""`python -m mtl course site`: the executed lessons as a static website that works offline.

Sphinx with ``myst-nb`` (notebooks as pages, never executed here) and ``sphinx-book-theme`` (a left
navigation, previous/next links, an "on this page" table of contents) writes:

- ``index.html``: what the course teaches and for whom (README's introduction), the lesson table,
  how to run the course and the workshop copies (README's sections);
- ``lessons/NN_*.html``: one page per lesson, in order, with links to download the lesson
  (``.ipynb``, with its outputs) and its workshop copy (``notebooks/exercises``, solutions blanked);
- ``api.html``: the package's public names from their docstrings;
- ``search.html``: Sphinx's full-text search (an index shipped with the site);
- ``_static/mathjax``: MathJax 3 copied from the ``sphinx-mathjax-offline`` package, so that math
  is typeset without a network (no CDN), drawn as SVG (no web font either).

Each lesson comes from the executed copy a course run left in ``executed`` (``course-out/``) when
there is one, else from the committed outputs of ``notebooks/``. Widgets are shown as the figure
they stored (a static page has no kernel). The site is built in a temporary folder beside ``out``
and replaces ``out`` only when complete; ``out`` must be empty, absent or a site built here before.
"""
from __future__ import annotations

import io
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mtl.course.runner import NOTEBOOKS, _static_widgets, find_lessons
from mtl.errors import SiteError

__all__ = ["Lesson", "SiteError", "plan_lessons", "build_site", "SITE_MARK"]

#: file that marks a folder as a site built here (and so safe to replace)
SITE_MARK = ".mtl-site"
README = NOTEBOOKS.parent / "README.md"
#: the README sections the home page shows after the lesson table, with the title they get there
HOME_SECTIONS = {"Two commands": "How to run it", "Workshops": "Workshops"}
#: the package's modules whose ``__all__`` the API page documents
API_MODULES = ("mtl", "mtl.data", "mtl.models", "mtl.algorithms")

CONF = """\
project = "mtl"
html_title = {title!r}
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
exclude_patterns = ["downloads/**", "_build"]
nb_execution_mode = "off"           # pages show stored outputs; nothing is executed
nb_merge_streams = True
nb_ipywidgets_js = {{}}             # widgets are shown as their stored figure: no widget library
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
mathjax_path = "mathjax/tex-svg.js"  # copied beside the site: SVG output, no font to fetch
html_context = {{"default_mode": "light"}}
html_favicon = "favicon.svg"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
autodoc_preserve_defaults = True   # defaults as written (a function default has no parsable repr)
html_theme = "sphinx_book_theme"
html_theme_options = {{
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}}
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False
html_last_updated_fmt = None
"""


#: the site's icon (else browsers ask for a /favicon.ico that a static host may not have)
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" '
           'fill="#1f5f8b"/><text x="16" y="22" font-size="14" text-anchor="middle" fill="#fff" '
           'font-family="sans-serif">mtl</text></svg>\n')


@dataclass(frozen=True)
class Lesson:
    """One lesson of the site: its page source (executed copy or committed lesson) and workshop copy."""

    name: str          # file stem, e.g. "03_maml"
    source: Path       # the notebook whose outputs the page shows
    executed: bool     # True when ``source`` is a course run's executed copy
    workshop: Path     # notebooks/exercises/<name>.ipynb


def plan_lessons(notebooks: Path = NOTEBOOKS, executed: Path | None = None) -> list[Lesson]:
    """The lessons of ``notebooks`` in order, each from ``executed/<name>.ipynb`` when that exists.

    Raises ``SiteError`` when a lesson has no workshop copy in ``notebooks/exercises``.
    """
    lessons = []
    for path in find_lessons(notebooks):
        run_copy = Path(executed) / path.name if executed is not None else None
        use_run = run_copy is not None and run_copy.is_file()
        workshop = Path(notebooks) / "exercises" / path.name
        if not workshop.is_file():
            raise SiteError(f"no workshop copy {workshop} of lesson {path.stem}: run "
                            "`python -m mtl course exercises`, then build the site again")
        lessons.append(Lesson(path.stem, run_copy if use_run else path, use_run, workshop))
    return lessons


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SiteError(f"{out} is a file: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARK).is_file():
        raise SiteError(f"{out} is not empty and holds no site built by `mtl course site` (no {SITE_MARK}): "
                        "choose an empty or new folder with --out; nothing was changed")


def _require_sphinx() -> None:
    try:
        import myst_nb  # noqa: F401
        import sphinx  # noqa: F401
        import sphinx_book_theme  # noqa: F401
        from importlib.metadata import PackageNotFoundError, distribution
        distribution("sphinx-mathjax-offline")
    except PackageNotFoundError:
        raise SiteError("the site needs sphinx-mathjax-offline (MathJax for offline pages): "
                        "pip install -e '.[site]'  (make course installs it)") from None
    except ImportError as error:
        raise SiteError(f"the site needs Sphinx, myst-nb and sphinx-book-theme ({error.name} is missing): "
                        "pip install -e '.[site]'  (make course installs them)") from None


def _title(nb, name: str) -> tuple[str, int, int]:
    """(title without its "NN · " prefix, index of the cell holding it, index of its line)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for j, line in enumerate(cell.source.splitlines()):
                if line.startswith("# "):
                    return re.sub(r"^\d+\s*[·.:-]\s*", "", line[2:].strip()), i, j
    raise SiteError(f"lesson {name} has no title (a markdown line '# NN · Title'): add one to the lesson")


def _lesson_page(lesson: Lesson, src: Path) -> str:
    """Write the lesson's page source (with download links under its title) and the two downloads
    into ``src``; returns the lesson's title."""
    try:
        nb = nbformat.read(lesson.source, as_version=4)
    except Exception as error:  # nbformat raises several kinds (JSON, validation, I/O)
        raise SiteError(f"cannot read {lesson.source} ({type(error).__name__}: {error}): restore it "
                        "(git checkout) or re-run the lesson") from None
    title, cell, line = _title(nb, lesson.name)
    for folder, notebook in (("notebooks", lesson.source), ("exercises", lesson.workshop)):
        (src / "downloads" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, src / "downloads" / folder / f"{lesson.name}.ipynb")
    page = _static_widgets(nb)
    page.metadata.pop("widgets", None)
    links = (f"{{download}}`Download this lesson <../downloads/notebooks/{lesson.name}.ipynb>` (`.ipynb`, with "
             f"its outputs) · {{download}}`its workshop copy <../downloads/exercises/{lesson.name}.ipynb>` "
             "(solution cells blanked, outputs cleared)")
    lines = page.cells[cell].source.splitlines()
    page.cells[cell].source = "\n".join(lines[:line + 1] + ["", links, ""] + lines[line + 1:])
    nbformat.write(page, src / "lessons" / f"{lesson.name}.ipynb")
    return title


def _readme_sections(readme: Path) -> tuple[str, str, dict[str, str]]:
    """(title, introduction, {section title: body}) of a README in Markdown; empty when absent."""
    if not readme.is_file():
        return "mtl", "", {}
    title, intro, sections, current = "mtl", [], {}, None
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("# ") and title == "mtl" and current is None and not intro:
            title = line[2:].strip()
        elif line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current is None:
            intro.append(line)
        else:
            sections[current].append(line)
    return title, "\n".join(intro).strip(), {k: "\n".join(v).strip() for k, v in sections.items()}


def _home_page(lessons: list[Lesson], titles: list[str], readme: Path) -> str:
    title, intro, sections = _readme_sections(readme)
    rows = [f"| {lesson.name[:2]} | {{doc}}`{t.replace('|', '·')} <lessons/{lesson.name}>` | "
            f"{{download}}`{lesson.name}.ipynb <downloads/notebooks/{lesson.name}.ipynb>` | "
            f"{{download}}`workshop copy <downloads/exercises/{lesson.name}.ipynb>` |"
            for lesson, t in zip(lessons, titles)]
    parts = [f"# {title}", intro, "## Lessons",
             "Each lesson is a page with the outputs of its last run; download the notebook to run it "
             "yourself, or its workshop copy to write the solutions.",
             "| # | lesson | notebook | workshop copy |\n|---|---|---|---|\n" + "\n".join(rows)]
    for name, shown in HOME_SECTIONS.items():
        if sections.get(name):
            parts += [f"## {shown}", sections[name]]
    parts += ["## The package", "{doc}`api` lists the public names of `mtl`, from their docstrings.",
              "```{toctree}\n:hidden:\n:caption: Lessons\n\n" + "\n".join(f"lessons/{x.name}" for x in lessons)
              + "\n```", "```{toctree}\n:hidden:\n:caption: Reference\n\napi\n```"]
    return "\n\n".join(p for p in parts if p) + "\n"


def _api_page() -> str:
    # a name exported at the top and by its sub-package is indexed once, under its top-level name
    sections = [f"## `{module}`\n\n```{{eval-rst}}\n.. automodule:: {module}\n   :members:\n"
                + ("   :no-index:\n" if i else "") + "```" for i, module in enumerate(API_MODULES)]
    return ("# API reference\n\nThe public names (``__all__``) of the package and its main sub-packages, "
            "from their docstrings.\n\n" + "\n\n".join(sections) + "\n")


def _copy_mathjax(static: Path) -> None:
    from importlib.metadata import distribution

    mathjax = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
    shutil.copytree(mathjax, static / "mathjax", dirs_exist_ok=True)


def build_site(out: Path, *, notebooks: Path = NOTEBOOKS, executed: Path | None = Path("course-out"),
               readme: Path = README) -> tuple[list[Lesson], list[str]]:
    """Build the site into ``out``; returns (the lessons it shows, Sphinx's warnings).

    Raises ``SiteError`` before anything is written when ``out`` holds something else, a lesson
    has no workshop copy, or Sphinx is not installed; and when Sphinx fails (``out`` unchanged).
    """
    from sphinx.application import Sphinx
    from sphinx.errors import SphinxError
    from sphinx.util.docutils import docutils_namespace, patch_docutils

    out = Path(out).resolve()
    _check_out(out)
    _require_sphinx()
    lessons = plan_lessons(notebooks, executed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mtl-site-src-") as work:
        src = Path(work) / "src"
        (src / "lessons").mkdir(parents=True)
        titles = [_lesson_page(lesson, src) for lesson in lessons]
        (src / "index.md").write_text(_home_page(lessons, titles, Path(readme)), encoding="utf-8")
        (src / "api.md").write_text(_api_page(), encoding="utf-8")
        (src / "favicon.svg").write_text(FAVICON, encoding="utf-8")
        (src / "conf.py").write_text(CONF.format(title=_readme_sections(Path(readme))[0]),
                                     encoding="utf-8")
        warnings = io.StringIO()
        # built beside ``out`` (one rename at the end); myst-nb writes images into the outdir's parent
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-building-", dir=out.parent))
        html = scratch / "html"
        try:
            try:
                with patch_docutils(src), docutils_namespace():
                    app = Sphinx(src, src, html, Path(work) / "doctrees", "html", status=None,
                                 warning=warnings, freshenv=True)
                    app.build(force_all=True)
            except SphinxError as error:
                raise SiteError(f"Sphinx failed: {error}\n{warnings.getvalue()[-3000:]}\n{out} was left as it was") \
                    from None
            _copy_mathjax(html / "_static")
            if (html / "_sources").is_dir() and not any((html / "_sources").iterdir()):
                (html / "_sources").rmdir()  # Sphinx makes it even when told to copy no source
            (html / SITE_MARK).write_text("built by `python -m mtl course site`; replaced by the next build\n")
            if out.exists():
                shutil.rmtree(out)
            html.rename(out)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return lessons, [re.sub(r"\x1b\[[0-9;]*m", "", w) for w in warnings.getvalue().splitlines() if w.strip()]
