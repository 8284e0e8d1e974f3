"""`python -m mtl course site`: the site built from the committed lesson outputs (nothing executed),
opened in headless Chromium (Debian's ``chromium``, driven by ``playwright``) over a local HTTP
server, with every request that leaves that server refused and recorded.

Built once per session. Skipped, with the reason printed, only when Chromium is absent.
"""
from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import nbformat
import pytest

from mtl.course.runner import find_lessons
from mtl.course.site import SITE_MARK, SiteError, build_site, plan_lessons

# Sphinx's notices to its extensions (napoleon, the theme) about its next major version
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning",
                                        "ignore:.*deprecated.*:PendingDeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CHROMIUM = Path("/usr/bin/chromium")
MATHJAX_DONE = "() => window.MathJax && MathJax.startup && MathJax.startup.promise"


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """(site folder, lessons, Sphinx warnings), built from notebooks/ only (no executed copies)."""
    out = tmp_path_factory.mktemp("course-out") / "site"
    lessons, warnings = build_site(out, notebooks=NOTEBOOKS, executed=None)
    return out, lessons, warnings


@pytest.fixture(scope="session")
def served(site):
    """Base URL of a local HTTP server over the site; stopped after the session."""
    handler = functools.partial(_QuietHandler, directory=str(site[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for this module's tests; closed with the module, since an open sync
    playwright keeps its event loop running and later tests of the same process start their own."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium) to run this test"
        print(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture
def offline_page(browser, served):
    """(page, base URL, console errors, requests that left the local server, which are aborted)."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    external, errors = [], []

    def route(r):
        if r.request.url.startswith(served) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    yield page, served, errors, external
    context.close()


def _markdown(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_home_page_links_every_lesson_in_order(site):
    out, lessons, _ = site
    assert [lesson.name for lesson in lessons] == [p.stem for p in find_lessons(NOTEBOOKS)]
    assert not any(lesson.executed for lesson in lessons)
    home = (out / "index.html").read_text()
    table = home[home.index('id="lessons"'):]
    positions = [table.index(f'href="lessons/{lesson.name}.html"') for lesson in lessons]
    assert positions == sorted(positions), "the lesson table is not in lesson order"
    assert (out / SITE_MARK).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["site"], "the build left files beside the site"


def test_lessons_have_prev_next_and_downloads(site):
    out, lessons, _ = site
    for i, lesson in enumerate(lessons):
        html = (out / "lessons" / f"{lesson.name}.html").read_text()
        if i > 0:
            assert re.search(rf'<a class="left-prev"\s+href="{lessons[i - 1].name}.html"', html), lesson.name
        if i + 1 < len(lessons):
            assert re.search(rf'<a class="right-next"\s+href="{lessons[i + 1].name}.html"', html), lesson.name
        assert "application/vnd.jupyter.widget-view+json" not in html  # widgets: their stored figure
        links = re.findall(r'href="(\.\./_downloads/[^"]+\.ipynb)"', html)
        assert len(links) == 2, f"{lesson.name}: expected the lesson and its workshop copy, got {links}"
        lesson_copy, workshop = ((out / "lessons" / link).read_bytes() for link in links)
        assert lesson_copy == (NOTEBOOKS / f"{lesson.name}.ipynb").read_bytes()
        assert workshop == (NOTEBOOKS / "exercises" / f"{lesson.name}.ipynb").read_bytes()


def test_built_without_warnings_and_loads_nothing_remote(site):
    out, _, warnings = site
    assert warnings == []
    for page in out.rglob("*.html"):
        remote = re.findall(r'<(?:script|img|iframe)\b[^>]*\bsrc="((?:https?:)?//[^"]+)"'
                            r'|<link\b[^>]*\bhref="((?:https?:)?//[^"]+)"', page.read_text())
        assert not remote, f"{page.relative_to(out)} loads {remote}"


def test_every_lesson_page_renders_offline(site, offline_page):
    _, lessons, _ = site
    page, base, errors, external = offline_page
    for lesson in lessons:
        page.goto(f"{base}/lessons/{lesson.name}.html")
        if page.locator(".math").count():  # Sphinx loads MathJax only where there is math
            page.wait_for_function(MATHJAX_DONE, timeout=60_000)
            page.evaluate("() => MathJax.startup.promise")  # resolves once the page is typeset
        images = page.evaluate("() => [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])")
        assert all(ok for _, ok in images), f"{lesson.name}: images that did not load: {images}"
        text = page.inner_text("article")
        assert "$$" not in text and "\\[" not in text and "\\(" not in text, f"{lesson.name}: raw TeX left"
        math = page.evaluate("() => [...document.querySelectorAll('.math')].map(e => "
                             "!!e.querySelector('mjx-container svg'))")
        assert all(math), f"{lesson.name}: {math.count(False)} of {len(math)} formulas not typeset"
        assert page.locator('mjx-merror, [data-mml-node="merror"]').count() == 0, f"{lesson.name}: a formula failed"
        if "$" in _markdown(lesson.name):
            assert math, f"{lesson.name}: its math did not become formulas"
    assert any(lesson.name.startswith("01") for lesson in lessons)
    assert not errors, "console errors:\n" + "\n".join(errors)
    assert not external, f"requests left the site: {external}"


def _ids(html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', html))


def test_every_internal_link_resolves(site):
    out = site[0]
    pages = sorted(out.rglob("*.html"))
    ids = {page: _ids(page.read_text()) for page in pages}
    broken, checked = [], 0
    for page in pages:
        for href in re.findall(r'<a\b[^>]*\bhref="([^"]*)"', page.read_text()):
            url = urllib.parse.urlsplit(href)
            if url.scheme or url.netloc or href.startswith("javascript:"):
                continue  # outward links (papers) are not part of the site
            target = (page.parent / urllib.parse.unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file() or out.resolve() not in target.parents:
                broken.append(f"{page.relative_to(out)} -> {href}")
            elif url.fragment and target.suffix == ".html" and url.fragment not in ids[target]:
                broken.append(f"{page.relative_to(out)} -> {href} (no such anchor)")
    assert checked > 100 and not broken, f"{len(broken)} broken of {checked}:\n" + "\n".join(broken[:30])


def _term_in_one_lesson(out: Path, lessons) -> tuple[str, str]:
    """A word of one lesson's prose whose first 7 letters appear in no other page (so no stemming
    can match it elsewhere): (word, lesson name)."""
    texts = {p: re.sub(r"<[^>]+>", " ", p.read_text()).lower() for p in out.rglob("*.html")}
    for lesson in lessons:
        page = out / "lessons" / f"{lesson.name}.html"
        for word in sorted(set(re.findall(r"\b[a-z]{9,}\b", _markdown(lesson.name).lower()))):
            if not any(word[:7] in text for p, text in texts.items() if p != page and p.name != "genindex.html"):
                return word, lesson.name
    raise AssertionError("no word appears in only one lesson")


def test_search_finds_a_term_of_one_lesson(site, offline_page):
    out, lessons, _ = site
    page, base, errors, external = offline_page
    word, name = _term_in_one_lesson(out, lessons)
    page.goto(f"{base}/search.html?q={word}")
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('#search-results .search-summary') "
                           "|| document.querySelector('#search-results .search-summary').textContent.length > 0")
    hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
    assert [h.split("#")[0].split("?")[0] for h in hrefs] == [f"lessons/{name}.html"], (word, hrefs)
    assert not errors and not external, (errors, external)


def test_api_page_lists_the_public_names(site, offline_page):
    page, base, errors, external = offline_page
    page.goto(f"{base}/api.html")
    for name in ("mtl.adapt", "mtl.maml_loss", "mtl.FewShotClassifier", "mtl.TaskBatch"):
        assert page.locator(f'[id="{name}"]').count() == 1, name
    adapt = page.locator('[id="mtl.adapt"]').locator("xpath=..").inner_text()
    assert "[N*K, C, H, W]" in adapt  # the shapes of its docstring
    assert not errors and not external, (errors, external)


def test_refuses_to_replace_a_folder_it_did_not_build(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SiteError, match="not empty"):
        build_site(out, notebooks=NOTEBOOKS, executed=None)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_unreadable_lesson_is_named_before_the_site_changes(site, tmp_path):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, notebooks)
    broken = find_lessons(notebooks)[-1]
    broken.write_text("{ not json")
    out = site[0].parent / "site"
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SiteError, match=f"cannot read .*{broken.name}"):
        build_site(out, notebooks=notebooks, executed=None)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in out.parent.iterdir()] == ["site"]


def test_a_lesson_comes_from_the_course_run_when_it_left_a_copy(tmp_path):
    run = tmp_path / "course-out"
    run.mkdir()
    first, *rest = find_lessons(NOTEBOOKS)
    (run / first.name).write_bytes(first.read_bytes())
    (run / "99_renamed_long_ago.ipynb").write_bytes(first.read_bytes())  # no such lesson any more: ignored
    lessons = plan_lessons(NOTEBOOKS, run)
    assert [lesson.name for lesson in lessons] == [first.stem] + [p.stem for p in rest]
    assert lessons[0].executed and lessons[0].source == run / first.name
    assert not any(lesson.executed for lesson in lessons[1:])
    assert all(lesson.source.parent == NOTEBOOKS for lesson in lessons[1:])


def test_a_lesson_without_its_workshop_copy_is_named(tmp_path):
    notebooks = tmp_path / "notebooks"
    (notebooks / "exercises").mkdir(parents=True)
    lesson = find_lessons(NOTEBOOKS)[0]
    (notebooks / lesson.name).write_bytes(lesson.read_bytes())
    with pytest.raises(SiteError, match=f"no workshop copy .*{lesson.stem}.*mtl course exercises"):
        plan_lessons(notebooks, None)
