"""What the lessons rely on: the quadratic task family, exercise checkers, figures, widgets, the course runner."""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")

import nbformat  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

import mtl  # noqa: E402
from mtl.cli import course as course_cli, main  # noqa: E402
from mtl.course import exercises, quadratic, viz, widgets  # noqa: E402
from mtl.course import runner as course  # noqa: E402
from mtl.data import FewShotDataset  # noqa: E402


@pytest.fixture(scope="module")
def tasks():
    return quadratic.sample_tasks(40, seed=3)


# ---------------------------------------------------------------------------- quadratic

@pytest.mark.parametrize("steps", [0, 1, 3])
def test_closed_form_meta_gradient_matches_autograd(tasks, steps):
    theta = torch.tensor([0.7, -1.2], dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(quadratic.meta_objective(theta, tasks, 0.08, steps), theta)
    assert torch.allclose(quadratic.meta_gradient(theta.detach(), tasks, 0.08, steps, "maml"), auto, atol=1e-12)


def test_first_order_direction_is_gradient_at_adapted_point(tasks):
    theta = torch.tensor([0.3, 0.4], dtype=torch.float64)
    phi = quadratic.adapted(theta, tasks, 0.1, 2).requires_grad_()
    (g,) = torch.autograd.grad(quadratic.task_loss(phi, tasks).sum(), phi)
    assert torch.allclose(quadratic.meta_gradient(theta, tasks, 0.1, 2, "first_order"), g.mean(0), atol=1e-12)


def test_optimal_init_minimises_the_meta_objective(tasks):
    best = quadratic.optimal_init(tasks, 0.1, 3, "maml")
    assert quadratic.meta_gradient(best, tasks, 0.1, 3).norm() < 1e-10
    value = quadratic.meta_objective(best, tasks, 0.1, 3)
    for shift in torch.eye(2, dtype=torch.float64) * 0.05:
        assert quadratic.meta_objective(best + shift, tasks, 0.1, 3) > value
        assert quadratic.meta_objective(best - shift, tasks, 0.1, 3) > value


def test_adaptation_moves_the_best_start_away_from_the_average(tasks):
    average = quadratic.optimal_init(tasks, method="average")
    assert torch.allclose(quadratic.optimal_init(tasks, 0.1, 0, "maml"), average, atol=1e-10)
    assert (quadratic.optimal_init(tasks, 0.1, 3, "maml") - average).norm() > 0.1
    assert (quadratic.optimal_init(tasks, 0.1, 3, "first_order") - quadratic.optimal_init(tasks, 0.1, 3)).norm() > 0.01
    # Reptile with one inner step is plain joint training (Nichol et al. 2018).
    assert torch.allclose(quadratic.optimal_init(tasks, 0.1, 1, "reptile"), average, atol=1e-10)


def test_trajectory_ends_where_adapted_says(tasks):
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    path = quadratic.inner_trajectory(theta, tasks, 0.05, 4)
    assert path.shape == (5, len(tasks), 2)
    assert torch.allclose(path[-1], quadratic.adapted(theta, tasks, 0.05, 4), atol=1e-12)


def test_regression_form_runs_through_mtl_adapt(tasks):
    x, y = quadratic.as_regression(tasks)
    model = quadratic.linear_model(2)
    theta = torch.tensor([0.5, -0.5], dtype=torch.float64)
    for t in range(3):
        assert torch.isclose(quadratic.half_squared_error(x[t] @ theta[:, None], y[t]),
                             quadratic.task_loss(theta, tasks)[t])
        phi = mtl.adapt(model, {"weight": theta[None]}, x[t], y[t], steps=3, lr=0.05,
                        loss_fn=quadratic.half_squared_error)
        assert torch.allclose(phi["weight"][0], quadratic.adapted(theta, tasks, 0.05, 3)[t], atol=1e-12)


def test_stable_lr_is_the_divergence_threshold(tasks):
    limit = quadratic.max_stable_lr(tasks)
    theta = torch.tensor([3.0, 3.0], dtype=torch.float64)
    assert quadratic.meta_objective(theta, tasks, 0.95 * limit, 200) < 1e-3
    assert quadratic.meta_objective(theta, tasks, 1.05 * limit, 200) > 1e3


def test_bad_arguments_say_what_to_do(tasks):
    with pytest.raises(ValueError, match="choose one of"):
        quadratic.optimal_init(tasks, 0.1, 1, "maml2")
    with pytest.raises(ValueError, match="at least one task"):
        quadratic.sample_tasks(0)


# ---------------------------------------------------------------------------- exercises

def _step(model, params, x, y, lr, loss_fn, *, sign=-1.0, graph=True, scale=True, inplace=False):
    loss = loss_fn(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=graph)
    if inplace:
        with torch.no_grad():
            for p, g in zip(params.values(), grads):
                p.sub_(lr * g)
        return dict(params)
    factor = lr if scale else 1.0
    return {n: p + sign * factor * g for (n, p), g in zip(params.items(), grads)}


def test_inner_step_checker_accepts_a_solution(capsys):
    exercises.check_inner_step(_step)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: _step(*a, sign=+1.0), "uphill"),
    (lambda *a: _step(*a, scale=False), "ignores lr"),
    (lambda *a: _step(*a, graph=False), "second-order"),
    (lambda *a: {n: p.detach() - a[4] * 0 for n, p in a[1].items()}, "unchanged"),
    (lambda *a: _step(*a, inplace=True), "in place"),
    (lambda *a: list(a[1].values()), "expected a dict"),
    (lambda *a: {"weight": next(iter(a[1].values()))}, "keys"),
])
def test_inner_step_checker_names_the_mistake(wrong, message):
    with pytest.raises(exercises.ExerciseError, match=message):
        exercises.check_inner_step(wrong)


def test_ci95_checker():
    exercises.check_ci95(lambda a: (a.mean(), 1.96 * a.std() / len(a) ** 0.5))
    with pytest.raises(exercises.ExerciseError, match="sqrt"):
        exercises.check_ci95(lambda a: (a.mean(), 1.96 * a.std()))
    with pytest.raises(exercises.ExerciseError, match="variance"):
        exercises.check_ci95(lambda a: (a.mean(), 1.96 * a.var() / len(a) ** 0.5))
    with pytest.raises(exercises.ExerciseError, match="1.96"):
        exercises.check_ci95(lambda a: (a.mean(), a.std() / len(a) ** 0.5))


def test_task_meta_loss_checker():
    import torch.nn.functional as F

    def right(model, params, sx, sy, qx, qy, *, steps, lr, first_order=False):
        fast = mtl.adapt(model, params, sx, sy, steps=steps, lr=lr, loss_fn=F.mse_loss, first_order=first_order)
        return F.mse_loss(torch.func.functional_call(model, fast, (qx,)), qy)

    exercises.check_task_meta_loss(right)
    with pytest.raises(exercises.ExerciseError, match="second-order"):
        exercises.check_task_meta_loss(lambda *a, **k: right(*a, **k, first_order=True))
    with pytest.raises(exercises.ExerciseError, match="support loss"):
        exercises.check_task_meta_loss(lambda m, p, sx, sy, qx, qy, **k: right(m, p, sx, sy, sx, sy, **k))
    with pytest.raises(exercises.ExerciseError, match="before"):
        exercises.check_task_meta_loss(lambda m, p, sx, sy, qx, qy, **k: right(m, p, sx, sy, qx, qy, steps=0, lr=0.0))


def test_reptile_checker():
    def right(theta, phis, eps):
        return {k: v + eps * (torch.stack([p[k] for p in phis]).mean(0) - v) for k, v in theta.items()}

    exercises.check_reptile_update(right)
    with pytest.raises(exercises.ExerciseError, match="sign"):
        exercises.check_reptile_update(lambda t, p, e: right(t, p, -e))
    with pytest.raises(exercises.ExerciseError, match="last task"):
        exercises.check_reptile_update(lambda t, p, e: right(t, p[-1:], e))



def _prototype_head(support, support_y, ways, *, scale=2.0, bias_of=lambda c: -(c ** 2).sum(-1), reduce="mean",
                    transpose=False):
    c = torch.stack([getattr(support[support_y == k], reduce)(0) for k in range(ways)])
    weight = scale * c
    return (weight.T if transpose else weight), bias_of(c)


def test_prototype_head_checker_accepts_the_identity(capsys):
    exercises.check_prototype_head(_prototype_head)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda s, y, n: _prototype_head(s, y, n, scale=1.0), "the weight is c, the identity gives 2c"),
    (lambda s, y, n: _prototype_head(s, y, n, scale=-2.0), "wrong sign"),
    (lambda s, y, n: _prototype_head(s, y, n, reduce="sum"), "sums"),
    (lambda s, y, n: _prototype_head(s, y, n, transpose=True), "transposed"),
    (lambda s, y, n: _prototype_head(s, y, n, bias_of=lambda c: (c ** 2).sum(-1)), "bias has the wrong sign"),
    (lambda s, y, n: _prototype_head(s, y, n, bias_of=lambda c: -c.norm(dim=-1)), "not squared"),
    (lambda s, y, n: _prototype_head(s, y, n, bias_of=lambda c: torch.zeros(len(c), dtype=c.dtype)), "missing"),
    (lambda s, y, n: _prototype_head(s, y, n, scale=1.0, bias_of=lambda c: -0.5 * (c ** 2).sum(-1)), "half"),
    (lambda s, y, n: _prototype_head(s, y, n)[0], "pair"),
])
def test_prototype_head_checker_names_the_mistake(wrong, message):
    with pytest.raises(exercises.ExerciseError, match=message):
        exercises.check_prototype_head(wrong)


def test_prototype_head_checker_accepts_heads_with_the_same_softmax(capsys):
    def shifted(support, support_y, ways):  # W = 2c + v, b = -||c||^2 + beta: the same softmax
        weight, bias = _prototype_head(support, support_y, ways)
        v = torch.linspace(-1.0, 2.0, support.shape[1], dtype=weight.dtype)
        return weight + v, bias + 3.5

    exercises.check_prototype_head(shifted)
    assert "one number per query" in capsys.readouterr().out
    exercises.check_prototype_head(lambda s, y, n: (_prototype_head(s, y, n)[0], _prototype_head(s, y, n)[1] - 7.0))
    assert "one number per query" in capsys.readouterr().out
    exercises.check_prototype_head(lambda s, y, n: tuple(t.float() for t in _prototype_head(s, y, n)))
    assert "W = 2c, b = -||c||^2;" in capsys.readouterr().out
    with pytest.raises(exercises.ExerciseError, match="half"):  # a common shift does not hide a slip
        exercises.check_prototype_head(lambda s, y, n: (_prototype_head(s, y, n, scale=1.0)[0] + 1.0,
                                                        -0.5 * (_prototype_head(s, y, n)[0] / 2).pow(2).sum(-1)))


def test_prototype_head_checker_needs_the_labels_not_the_order():
    def by_position(support, support_y, ways):
        c = support.reshape(ways, -1, support.shape[1]).mean(1)
        return 2 * c, -(c ** 2).sum(-1)

    with pytest.raises(exercises.ExerciseError, match="by position, not by label"):
        exercises.check_prototype_head(by_position)


def _nearest_centroid(support, support_y, query, ways, *, normalise=True, form="distance", reduce="mean"):
    import torch.nn.functional as F

    if normalise:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    c = torch.stack([getattr(support[support_y == k], reduce)(0) for k in range(ways)])
    if form == "distance":
        return -torch.cdist(query, c) ** 2
    return 2 * query @ c.T - (c ** 2).sum(-1)  # minus the squared distance, without ||q||^2 = 1


def test_nearest_centroid_checker_accepts_logits_up_to_a_constant_per_query(capsys):
    exercises.check_nearest_centroid(_nearest_centroid)
    assert "minus squared distances (nearest centroid)" in capsys.readouterr().out
    exercises.check_nearest_centroid(lambda *a: _nearest_centroid(*a, form="linear"))
    assert "one number per query" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: _nearest_centroid(*a, normalise=False), "not L2-normalised"),
    (lambda *a: -_nearest_centroid(*a), "plus distances"),
    (lambda *a: _nearest_centroid(*a, reduce="sum"), "sums"),
    (lambda *a: -(-_nearest_centroid(*a)).sqrt(), "not squared"),
    (lambda s, y, q, n: _nearest_centroid(s, y, q, n)[:, :-1], "shape"),
])
def test_nearest_centroid_checker_names_the_mistake(wrong, message):
    with pytest.raises(exercises.ExerciseError, match=message):
        exercises.check_nearest_centroid(wrong)


def test_hardest_class_checker():
    def right(logits, query_y, classes):
        correct = (logits.argmax(-1) == query_y).float()
        per_class = torch.stack([correct[:, query_y[0] == c].mean(1) for c in range(classes.shape[1])], 1)
        return classes.gather(1, per_class.argmin(1, keepdim=True)).squeeze(1)

    exercises.check_hardest_class(right)
    with pytest.raises(exercises.ExerciseError, match="labels"):
        exercises.check_hardest_class(lambda z, y, c: right(z, y, torch.arange(c.shape[1]).expand_as(c)))


def test_checkers_try_several_settings():
    """A solution that holds one setting fixed passes the first setting and is caught at the next."""
    import torch.nn.functional as F

    def fixed_loss(model, params, x, y, lr, loss_fn):  # ignores loss_fn
        return _step(model, params, x, y, lr, F.mse_loss)

    with pytest.raises(exercises.ExerciseError, match="loss_fn"):
        exercises.check_inner_step(fixed_loss)

    def fixed_steps(model, params, sx, sy, qx, qy, *, steps, lr):
        fast = mtl.adapt(model, params, sx, sy, steps=2, lr=0.1, loss_fn=F.mse_loss)
        return F.mse_loss(torch.func.functional_call(model, fast, (qx,)), qy)

    with pytest.raises(exercises.ExerciseError, match="steps=1, lr=0.5"):
        exercises.check_task_meta_loss(fixed_steps)

    def fixed_eps(theta, phis, eps):
        return {k: v + 0.25 * (torch.stack([p[k] for p in phis]).mean(0) - v) for k, v in theta.items()}

    with pytest.raises(exercises.ExerciseError, match="3 tasks, outer_lr 0.6"):
        exercises.check_reptile_update(fixed_eps)
    with pytest.raises(exercises.ExerciseError, match="first task"):
        exercises.check_reptile_update(
            lambda t, p, e: {k: v + e * (p[0][k] - v) for k, v in t.items()})


def _t_cdf(t: float, df: int) -> float:
    """Student's t CDF for an integer ``df`` in closed form (Abramowitz & Stegun 26.7.3-4)."""
    import math

    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:
        term, total = math.cos(theta), 0.0
        if df > 1:
            total = term
            for j in range(3, df - 1, 2):
                term *= c2 * (j - 1) / j
                total += term
        a = 2 / math.pi * (theta + s * total)
    else:
        term = total = 1.0
        for j in range(2, df - 1, 2):
            term *= c2 * (j - 1) / j
            total += term
        a = s * total
    return (1 + a) / 2


def _t_quantile(p: float, df: int) -> float:
    low, high = 0.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def test_student_t_quantile():
    assert _t_quantile(0.975, 9) == pytest.approx(2.2621571628, abs=1e-9)  # the printed tables' 2.262
    for df in (9, 29, 599, 600):
        assert exercises._t_quantile(0.975, df) == pytest.approx(_t_quantile(0.975, df), abs=1e-9)


def test_ci95_checker_accepts_every_correct_interval(capsys):
    n_std = lambda a: a.std(correction=0)  # noqa: E731
    exercises.check_ci95(lambda a: (a.mean(), 1.96 * n_std(a) / len(a) ** 0.5))  # ddof 0, as np.std
    exercises.check_ci95(lambda a: (a.mean(), 1.959963984540054 * a.std() / len(a) ** 0.5))  # the exact z
    assert "1.96 std / sqrt(n)" in capsys.readouterr().out
    exercises.check_ci95(lambda a: (a.mean(), _t_quantile(0.975, len(a) - 1) * a.std() / len(a) ** 0.5))
    out = capsys.readouterr().out
    assert "Student-t" in out and "t = 2.262 at n = 10" in out
    with pytest.raises(exercises.ExerciseError, match="n - 1 degrees of freedom"):
        exercises.check_ci95(lambda a: (a.mean(), _t_quantile(0.975, len(a)) * a.std() / len(a) ** 0.5))
    with pytest.raises(exercises.ExerciseError, match="99%"):
        exercises.check_ci95(lambda a: (a.mean(), 2.576 * a.std() / len(a) ** 0.5))


# ---------------------------------------------------------------------------- viz and widgets

def test_quadratic_figures(tasks):
    fig = viz.quadratic_family(tasks, 0.1, 2)
    assert len(fig.axes) == 2  # plot + colour bar
    fig = viz.meta_landscape(tasks, 0.1, 2)
    assert fig.axes[0].get_legend() is not None and len(fig.axes) == 2  # plot + colour bar
    fig = viz.reptile_geometry(tasks, torch.tensor([1.0, 1.0], dtype=torch.float64), 0.1, 3, show=4)
    assert len(fig.axes[0].texts) == 4 + 3  # one arrow per shown task, one per method
    fig = viz.fixed_point_paths(tasks, 0.1, 5)
    assert len(fig.axes[0].lines) == 3
    png = viz.figure_png(viz.gradient_arrows(torch.zeros(2), {"a": torch.ones(2), "b": -torch.ones(2)}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_differences_draws_each_pair_with_its_interval():
    from mtl.course.compare import paired

    pairs = [paired("a", [1.0, 0.8, 0.9], "b", [0.6, 0.6, 0.7]), paired("c", [0.5, 0.7, 0.6], "b", [0.6, 0.6, 0.7])]
    fig = viz.paired_differences(pairs, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a - b", "c - b"]
    points = next(line for line in ax.lines if line.get_marker() == "o")  # the means, in points, first pair on top
    x, y = points.get_data()
    assert list(y) == [0, 1] and x[0] == pytest.approx(100 * pairs[0].mean) and ax.get_ylim()[0] > ax.get_ylim()[1]


def _tiny_dataset(classes=6, per_class=4):
    images = torch.randint(0, 256, (classes, per_class, 1, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return FewShotDataset(images, [f"c{i}" for i in range(classes)], "omniglot", "train")


def test_episode_grid_has_a_cell_per_image():
    x = torch.rand(3 * 2, 1, 8, 8)
    y = torch.arange(3).repeat_interleave(2)
    fig = viz.episode_grid(x, y, torch.rand(3 * 4, 1, 8, 8), torch.arange(3).repeat_interleave(4), max_query=3)
    assert len(fig.axes) == 3 * (2 + 3)


def test_inner_loop_explorer_redraws(tasks):
    explorer = widgets.inner_loop_explorer(tasks, lr=0.05, steps=1)
    image, caption = explorer.image.value, explorer.caption.value
    explorer.controls["steps"].value = 4
    assert explorer.image.value != image and explorer.caption.value != caption
    assert explorer.controls["lr"].max < quadratic.max_stable_lr(tasks)
    assert "mtl-explorer" in explorer._dom_classes


def test_episode_browser_redraws():
    browser = widgets.episode_browser(_tiny_dataset(), ways=3, shots=1, queries=1)
    before = browser.image.value
    browser.controls["seed"].value = 5
    assert browser.image.value != before
    assert browser.controls["ways"].max == 6


# ---------------------------------------------------------------------------- course runner

def _write_lessons(folder, sources):
    for name, cells in sources.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)


def test_find_lessons_orders_and_filters(tmp_path):
    _write_lessons(tmp_path, {"01_b.ipynb": [], "00_a.ipynb": [], "notes.ipynb": []})
    assert [p.name for p in course.find_lessons(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]
    assert [p.name for p in course.find_lessons(tmp_path, ["01"])] == ["01_b.ipynb"]
    with pytest.raises(course.LessonError, match="choose among"):
        course.find_lessons(tmp_path, ["07"])
    with pytest.raises(course.LessonError, match="no lessons"):
        course.find_lessons(tmp_path / "nowhere")


def test_clean_and_blank():
    nb = new_notebook(cells=[new_code_cell("# SOLUTION\ndef f(x):\n    return 2 * x", execution_count=3,
                                           outputs=[], metadata={"execution": {"iopub.status.busy": "2026"},
                                                                 "tags": ["keep"]})])
    nb.metadata["widgets"] = {"state": {}}
    cleaned = course.clean_notebook(nb)
    assert "widgets" not in cleaned.metadata and "execution" not in cleaned.cells[0].metadata
    assert cleaned.cells[0].metadata["tags"] == ["keep"]
    blank = course.blank_solutions(nb)
    assert "return 2 * x" not in blank.cells[0].source and "def f(x):" in blank.cells[0].source
    assert blank.cells[0].execution_count is None
    assert "return 2 * x" in nb.cells[0].source  # the original is untouched


def test_course_run_executes_in_order_and_writes_html(tmp_path, monkeypatch):
    lessons, out = tmp_path / "notebooks", tmp_path / "out"
    lessons.mkdir()
    _write_lessons(lessons, {"00_a.ipynb": [new_markdown_cell("# A"),
                                            new_code_cell("import os\nprint(os.environ['MTL_PROFILE'])"),
                                            new_code_cell("# NBVAL_RAISES_EXCEPTION\nraise ValueError('on purpose')"),
                                            new_code_cell("1 + 1")]})
    monkeypatch.setenv("MTL_PROFILE", "cpu")
    parser = argparse.ArgumentParser()
    course_cli.add_arguments(parser)
    args = parser.parse_args(["run", "--notebooks", str(lessons), "--out", str(out), "--inplace", "--no-progress",
                              "--profile", "gpu"])
    assert course_cli.run(args) == 0
    executed = nbformat.read(lessons / "00_a.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3]
    assert code[1].outputs[0].ename == "ValueError"  # a marked cell may raise; the run goes on
    assert code[0].outputs[0].text.strip() == "gpu"  # the profile reaches the kernel
    assert all("execution" not in c.metadata for c in code)
    assert (out / "00_a.html").read_text().count("<html") == 1 and (out / "00_a.ipynb").exists()


def test_course_run_reports_a_failing_lesson(tmp_path, capsys):
    _write_lessons(tmp_path, {"00_bad.ipynb": [new_code_cell("raise RuntimeError('boom')")]})
    assert main(["course", "run", "--notebooks", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress",
                 "--no-html"]) == 1
    err = capsys.readouterr().err
    assert "00_bad.ipynb failed" in err and "boom" in err and "--lessons 00" in err


def test_course_run_executes_lessons_at_once_one_thread_each(tmp_path, monkeypatch):
    lessons, out = tmp_path / "notebooks", tmp_path / "out"
    lessons.mkdir()
    _write_lessons(lessons, {f"0{i}_{c}.ipynb": [new_code_cell("import os\nprint(os.environ.get('OMP_NUM_THREADS'))")]
                             for i, c in enumerate("abc")})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["course", "run", "--notebooks", str(lessons), "--out", str(out), "--no-progress", "--no-html",
                 "--jobs", "2"]) == 0
    for name in ("00_a", "01_b", "02_c"):
        assert nbformat.read(out / f"{name}.ipynb", as_version=4).cells[0].outputs[0].text.strip() == "1"


def test_course_run_refuses_no_jobs_before_writing(tmp_path, capsys):
    _write_lessons(tmp_path, {"00_a.ipynb": [new_code_cell("1")]})
    assert main(["course", "run", "--notebooks", str(tmp_path), "--out", str(tmp_path / "o"), "--jobs", "0"]) != 0
    assert "--jobs must be 1 or more" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_learning_curves_draw_every_validation_row_against_steps_and_time():
    import matplotlib

    matplotlib.use("Agg")
    from mtl.course import viz

    rows = [{"kind": "train", "step": 1, "loss": 1.0}] + [
        {"kind": "val", "step": s, "accuracy": a, "ci95": 0.02, "elapsed_s": 2.0 * s}
        for s, a in [(10, 0.3), (20, 0.5), (30, 0.6)]]
    fig = viz.learning_curves({"a": rows, "b": rows[:2]}, reference=20.0)
    steps_axis, time_axis = fig.axes
    lines = [line for line in steps_axis.lines if line.get_label() in ("a", "b")]
    assert [list(line.get_xdata()) for line in lines] == [[10, 20, 30], [10]]
    assert list(lines[0].get_ydata()) == [30.0, 50.0, 60.0]
    assert list(time_axis.lines[0].get_xdata()) == [20.0, 40.0, 60.0]
    assert "accuracy" in steps_axis.get_ylabel()
    (only,) = viz.learning_curves({"a": rows}, wall_time=False).axes  # runs whose times do not compare
    assert only.get_xlabel() == "meta-steps" and list(only.lines[0].get_xdata()) == [10, 20, 30]


def test_maml_graph_draws_one_inner_gradient_per_step():
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    for steps in (0, 1, 3):
        fig = viz.maml_graph(steps)
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.texts]
        assert labels.count("∇L_S") == steps and f"L_Q({'θ' if steps == 0 else labels[steps]})" in labels
        arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == 5 * steps + 2  # 3 forward + 2 backward per step, query loss and back
        plt.close(fig)


def test_label_points_keeps_labels_apart():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = [1.0, 1.02, 1.04, 5.0, 1.01], [80.0, 80.2, 79.9, 50.0, 80.1]  # four points on top of each other
    ax.scatter(xs, ys)
    ax.set_ylim(49, 81)  # the cluster at the top edge, the last point at the right edge
    yerr = [3.0, 0.0, 0.0, 0.0, 0.0]
    texts = viz.label_points(ax, xs, ys, ["MAML", "first-order MAML", "Reptile", "ProtoNet", "ANIL"], yerr=yerr)
    renderer = fig.canvas.get_renderer()
    boxes = [viz._text_box(t, renderer) for t in texts]  # the text alone, not its leader line
    assert [t.get_text() for t in texts] == ["MAML", "first-order MAML", "Reptile", "ProtoNet", "ANIL"]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # no label covers a point or MAML's error bar
    for x, y in zip(xs, ys):
        px, py = ax.transData.transform((x, y))
        assert not any(b.contains(px, py) for b in boxes)
    px, low = ax.transData.transform((xs[0], ys[0] - yerr[0]))
    _, high = ax.transData.transform((xs[0], ys[0] + yerr[0]))
    assert not any(b.x0 <= px <= b.x1 and b.y0 <= high and b.y1 >= low for b in boxes)
    # every label inside the axes, none over the title (the top points' labels move down)
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    # labels moved off their point's line are tied to it by a leader line
    assert any(t.arrow_patch is not None for t in texts)
    plt.close(fig)


def test_show_source_names_the_file_of_a_decorated_method(capsys):
    from mtl.algorithms.transfer import finetune

    viz.show_source(finetune.NearestCentroid.predict)  # wrapped by @torch.no_grad()
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "# mtl/algorithms/transfer/finetune.py"
    assert "def predict" in printed
