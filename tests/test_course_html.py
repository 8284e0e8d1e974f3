"""The HTML copies `python -m mtl course run` writes render their math offline: MathJax is copied
beside them (no CDN), checked in headless Chromium with the network cut off."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from mtl.course.runner import _export_html

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


def test_exported_lesson_renders_math_without_a_network(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    nb = nbformat.read(REPO / "notebooks" / "01_bilevel_objective.ipynb", as_version=4)
    page_path = tmp_path / "01_bilevel_objective.html"
    _export_html(nb, page_path)
    html = page_path.read_text()
    assert "libs/mathjax" not in html and "mathjax/MathJax.js" in html  # no CDN for math
    assert (tmp_path / "mathjax" / "MathJax.js").is_file()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.goto(page_path.as_uri())
            page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue "
                                   "&& MathJax.Hub.queue.pending === 0 && !MathJax.Hub.queue.running",
                                   timeout=60_000)
            rendered = page.locator(".MathJax, .MathJax_Display").count()
            shot = tmp_path / "math.png"
            page.locator(".MathJax_Display").first.screenshot(path=str(shot))
            text = page.inner_text("body")
        finally:
            browser.close()
    assert rendered > 20, f"only {rendered} formulas typeset"
    assert "$$" not in text, "raw TeX left in the page"
    assert shot.stat().st_size > 500


def test_an_explorer_shows_its_figure_where_no_widget_can_run(tmp_path):
    """Offline HTML copies (and static viewers) get the explorer's current figure and caption."""
    import base64

    import ipywidgets  # noqa: F401
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from mtl.course import quadratic, widgets

    explorer = widgets.inner_loop_explorer(quadratic.sample_tasks(4, seed=0))
    bundle = explorer._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == explorer.image.value
    assert bundle["text/plain"].startswith("Explorer: best start for adaptation")
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab still gets the widget
    nb = new_notebook(cells=[new_code_cell("explorer", outputs=[new_output("display_data", data=bundle)])])
    _export_html(nb, tmp_path / "page.html")
    html = (tmp_path / "page.html").read_text()
    assert "data:image/png;base64," + bundle["image/png"][:40] in html
    assert 'type="application/vnd.jupyter.widget-view+json"' not in html
