"""Figures the lessons show. Each function draws on the axes it is given (or a new figure) and
returns the figure; no function calls ``plt.show()``, so a lesson cell ends with ``;``.

- ``quadratic_family``: task landscapes, inner-loop paths, the average vs the meta-learned start
- ``meta_landscape``: contours of the post-adaptation loss with every method's fixed point
- ``gradient_arrows``: update directions at one point (closed form, autodiff, first order, Reptile)
- ``reptile_geometry``: theta, the adapted weights phi_tau, and each method's step from theta
- ``fixed_point_paths``: where MAML, first-order MAML and Reptile converge as the inner steps grow
- ``episode_grid``: a support/query grid of one N-way K-shot episode
- ``regression_fits``: sinusoid fits after 0..k inner steps (MAML paper, Figure 2)
- ``mean_with_band``: curves with a shaded 95% interval
- ``learning_curves``: validation score of each training run against meta-steps and wall time
- ``paired_differences``: paired differences between methods, each with its 95% interval, against 0
- ``figure_png``: a figure as PNG bytes (what the widgets display)
- ``show_source``: the code of a function or class of mtl, headed by the file it lives in
- ``maml_graph``: the computation graph of one MAML step (inner steps, query loss, second order)
- ``label_points``: labels beside scatter points that do not overlap
"""
from __future__ import annotations

import inspect
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from mtl.course import quadratic

__all__ = ["quadratic_family", "meta_landscape", "gradient_arrows", "reptile_geometry", "fixed_point_paths",
           "episode_grid", "regression_fits", "mean_with_band", "learning_curves", "figure_png",
           "show_source", "maml_graph", "label_points", "paired_differences", "METHOD_STYLE"]

#: one colour and marker per method, the same in every lesson
METHOD_STYLE = {
    "average": dict(color="tab:gray", marker="s", label="best average solution"),
    "maml": dict(color="tab:red", marker="*", label="MAML (exact meta-gradient)"),
    "first_order": dict(color="tab:blue", marker="D", label="first-order MAML"),
    "reptile": dict(color="tab:green", marker="P", label="Reptile"),
}


def _axes(ax, figsize=(6, 4.5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _grid(tasks: quadratic.QuadraticTasks, margin: float = 1.0, n: int = 121):
    lo = tasks.optimum.min(0).values.numpy() - margin
    hi = tasks.optimum.max(0).values.numpy() + margin
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], -1))  # [n*n, 2]
    return gx, gy, points


def quadratic_family(tasks: quadratic.QuadraticTasks, lr: float, steps: int, *, show: int = 6, ax=None,
                     methods: Sequence[str] = ("average", "maml")) -> Figure:
    """Level sets of ``show`` tasks (colour = sharpness), every optimum, and the inner-loop paths
    (``steps`` steps of size ``lr``) from the MAML start to the shown tasks."""
    fig, ax = _axes(ax)
    sharp = torch.linalg.eigvalsh(tasks.curvature).max(-1).values.log().numpy()
    cmap, norm = plt.get_cmap("viridis"), plt.Normalize(sharp.min(), sharp.max())
    ax.scatter(*tasks.optimum.T.numpy(), c=sharp, cmap=cmap, norm=norm, s=12, alpha=0.6, zorder=2)
    gx, gy, points = _grid(tasks)
    # Show tasks spread from the sharpest to the flattest, each by the level set L = 0.1.
    shown = np.argsort(sharp)[np.linspace(0, len(sharp) - 1, min(show, len(sharp))).round().astype(int)]
    for t in shown:
        one = quadratic.QuadraticTasks(tasks.curvature[t:t + 1].expand(len(points), 2, 2),
                                       tasks.optimum[t:t + 1].expand(len(points), 2))
        z = quadratic.task_loss(points, one).reshape(gx.shape).numpy()
        ax.contour(gx, gy, z, levels=[0.1], colors=[cmap(norm(sharp[t]))], linewidths=1.2)
    start = quadratic.optimal_init(tasks, lr, steps, "maml")
    path = quadratic.inner_trajectory(start, tasks, lr, steps)[:, shown].numpy()  # [steps+1, show, 2]
    for t in range(path.shape[1]):
        ax.plot(path[:, t, 0], path[:, t, 1], "-o", color="tab:red", ms=2.5, lw=1, alpha=0.7, zorder=3)
    for method in methods:
        point = quadratic.optimal_init(tasks, lr, steps, method).numpy()
        ax.scatter(*point, s=160, edgecolor="black", zorder=4, **METHOD_STYLE[method])
    ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", aspect="equal",
           title=f"tasks and {steps} inner step{'' if steps == 1 else 's'}, " + r"$\alpha$" + f" = {lr:.3g}")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="log sharpness", shrink=0.8)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def meta_landscape(tasks: quadratic.QuadraticTasks, lr: float, steps: int, *, ax=None,
                   methods: Sequence[str] = ("average", "maml", "first_order", "reptile")) -> Figure:
    """Contours of the meta-objective ``mean_tau L_tau(phi_tau(theta))`` over theta (natural log, with
    a colour bar), with each method's fixed point (``quadratic.optimal_init``)."""
    fig, ax = _axes(ax)
    gx, gy, points = _grid(tasks, margin=0.5, n=81)
    z = quadratic.meta_objective_grid(points, tasks, lr, steps).reshape(gx.shape)
    filled = ax.contourf(gx, gy, z.log().numpy(), levels=20, cmap="Greys_r", alpha=0.8)
    fig.colorbar(filled, ax=ax, label=r"$\ln$ of the mean loss after adaptation")
    for method in methods:
        point = quadratic.optimal_init(tasks, lr, steps, method).numpy()
        ax.scatter(*point, s=160, edgecolor="black", zorder=4, **METHOD_STYLE[method])
    ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", aspect="equal",
           title="log post-adaptation loss " + r"$\mathbb{E}_\tau L_\tau(\phi_\tau(\theta))$")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def gradient_arrows(origin: Tensor, directions: Mapping[str, Tensor], *, ax=None) -> Figure:
    """Arrows from ``origin`` ``[2]`` for each named direction ``[2]`` (drawn as descent: minus it)."""
    fig, ax = _axes(ax, figsize=(5, 4.5))
    o = origin.detach().numpy()
    tips = [o]
    for i, (name, d) in enumerate(directions.items()):
        step = -d.detach().numpy()
        style = dict(lw=4 - 1.2 * i, color=f"C{i}", linestyle="-" if i % 2 == 0 else "--")  # equal arrows stay visible
        ax.annotate("", xy=o + step, xytext=o, arrowprops=dict(arrowstyle="->", **style))
        ax.plot([], [], label=name, **style)
        tips.append(o + step)
    tips = np.stack(tips)
    pad = 0.15 * (tips.max(0) - tips.min(0)).max() + 1e-3
    ax.set(xlim=(tips[:, 0].min() - pad, tips[:, 0].max() + pad), ylim=(tips[:, 1].min() - pad, tips[:, 1].max() + pad),
           aspect="equal", xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", title="minus the update direction at " +
           f"({o[0]:.2f}, {o[1]:.2f})")
    ax.legend(fontsize=8)
    return fig


def reptile_geometry(tasks: quadratic.QuadraticTasks, theta: Tensor, lr: float, steps: int, *, show: int = 8,
                     ax=None) -> Figure:
    """From ``theta`` ``[2]``: the adapted weights of ``show`` tasks (thin arrows), their mean, and the
    descent step of each method (MAML, first-order MAML, Reptile), each scaled to the Reptile step."""
    fig, ax = _axes(ax)
    phi = quadratic.adapted(theta, tasks, lr, steps)
    o = theta.numpy()
    for p in phi[:show].numpy():
        ax.annotate("", xy=p, xytext=o, arrowprops=dict(arrowstyle="->", color="tab:green", lw=0.8, alpha=0.5))
    ax.scatter(*phi[:show].T.numpy(), s=15, color="tab:green", label=r"adapted weights $\phi_\tau$")
    mean_phi = phi.mean(0).numpy()
    ax.scatter(*mean_phi, s=90, color="tab:green", edgecolor="black", zorder=4, label=r"mean $\phi_\tau$")
    reference = float(quadratic.meta_gradient(theta, tasks, lr, steps, "reptile").norm())
    for method in ("maml", "first_order", "reptile"):
        d = quadratic.meta_gradient(theta, tasks, lr, steps, method)
        tip = o - (d / d.norm() * reference).numpy()
        style = METHOD_STYLE[method]
        ax.annotate("", xy=tip, xytext=o, arrowprops=dict(arrowstyle="-|>", color=style["color"], lw=2.5))
        ax.plot([], [], color=style["color"], lw=2.5, label=f"{style['label']} step (direction)")
    ax.scatter(*o, s=80, color="black", zorder=5, label=r"$\theta$")
    ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", title=f"one meta-step from theta, {steps} inner steps")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def fixed_point_paths(tasks: quadratic.QuadraticTasks, lr: float, max_steps: int = 20, *, ax=None) -> Figure:
    """Each method's fixed point (``quadratic.optimal_init``) for 1..``max_steps`` inner steps."""
    fig, ax = _axes(ax)
    ks = range(1, max_steps + 1)
    for method in ("maml", "first_order", "reptile"):
        path = torch.stack([quadratic.optimal_init(tasks, lr, k, method) for k in ks]).numpy()
        style = METHOD_STYLE[method]
        ax.plot(path[:, 0], path[:, 1], "-", color=style["color"], lw=1.5)
        ax.scatter(path[:, 0], path[:, 1], s=12, color=style["color"])
        ax.scatter(*path[0], marker=style["marker"], s=120, edgecolor="black", color=style["color"],
                   label=f"{style['label']} (k = 1 marked)", zorder=4)
    avg = quadratic.optimal_init(tasks, method="average").numpy()
    ax.scatter(*avg, s=140, edgecolor="black", zorder=5, **METHOD_STYLE["average"])
    ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$",
           title=f"fixed points, k = 1..{max_steps} inner steps, " + r"$\alpha$" + f" = {lr:.3g}")
    ax.legend(fontsize=7)
    return fig


def episode_grid(support_x: Tensor, support_y: Tensor, query_x: Tensor | None = None,
                 query_y: Tensor | None = None, *, class_names: Sequence[str] | None = None,
                 max_query: int = 5, fig: Figure | None = None) -> Figure:
    """One episode: a row per class, its K support images then up to ``max_query`` query images.

    ``support_x`` ``[N*K, C, H, W]`` in [0, 1], ``support_y`` ``[N*K]`` (labels 0..N-1), same for query.
    """
    ways = int(support_y.max()) + 1
    shots = int((support_y == 0).sum())
    queries = 0 if query_y is None else min(max_query, int((query_y == 0).sum()))
    cols = shots + queries
    fig = fig or plt.figure(figsize=(1.1 * cols + 1.5, 1.1 * ways))
    axes = fig.subplots(ways, cols, squeeze=False)
    for label in range(ways):
        row = [support_x[support_y == label][k] for k in range(shots)]
        if queries:
            row += [query_x[query_y == label][q] for q in range(queries)]
        for col, image in enumerate(row):
            ax = axes[label, col]
            img = image.permute(1, 2, 0).squeeze(-1).cpu().numpy()
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("tab:blue" if col < shots else "tab:orange")
                side.set_linewidth(2)
            if label == 0:
                ax.set_title("support" if col < shots else "query", fontsize=8,
                             color="tab:blue" if col < shots else "tab:orange")
        name = f"label {label}" if class_names is None else f"{label}: {class_names[label]}"
        axes[label, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    return fig


def regression_fits(x: Tensor, truth: Tensor, predictions: Mapping[str, Tensor], *, support: tuple | None = None,
                    ax=None, title: str = "") -> Figure:
    """A 1-D regression: the true curve, labelled prediction curves, and the support points.

    ``x`` ``[n]`` sorted, ``truth`` ``[n]``, each prediction ``[n]``; ``support`` = (xs ``[K]``, ys ``[K]``).
    """
    fig, ax = _axes(ax)
    ax.plot(x.numpy(), truth.numpy(), color="black", lw=2, label="true function")
    styles = ["--", "-", ":", "-."]
    for i, (name, y) in enumerate(predictions.items()):
        ax.plot(x.numpy(), y.detach().numpy(), styles[i % 4], color=f"C{i}", lw=1.5, label=name)
    if support is not None:
        ax.scatter(support[0].numpy(), support[1].numpy(), marker="^", s=60, color="tab:purple", zorder=5,
                   label=f"{len(support[0])} support points")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend(fontsize=8)
    return fig


def mean_with_band(x: Sequence[float], curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   ax=None, xlabel: str = "", ylabel: str = "", title: str = "") -> Figure:
    """Each curve ``name -> (mean [n], half_width [n])`` drawn with a shaded band mean +- half_width."""
    fig, ax = _axes(ax)
    for i, (name, (mean, half)) in enumerate(curves.items()):
        mean, half = np.asarray(mean, dtype=float), np.asarray(half, dtype=float)
        ax.plot(x, mean, "-o", ms=3, color=f"C{i}", label=name)
        ax.fill_between(x, mean - half, mean + half, color=f"C{i}", alpha=0.2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return fig


def learning_curves(histories: Mapping[str, Sequence[Mapping]], *, axes=None, title: str = "",
                    reference: float | None = None,
                    time_label: str = "training wall time (s, validation included)", wall_time: bool = True) -> Figure:
    """Validation score of each run, against meta-steps (left) and training wall time (right; with
    ``wall_time=False`` the meta-steps panel only, for runs whose times do not compare).

    ``histories``: name -> the engine's metrics rows (``RunSummary.history``, or the lines of a run's
    ``metrics.jsonl``); the ``kind == "val"`` rows are drawn, with their 95% interval as a band.
    ``reference``: a horizontal line (chance, or a published number); ``time_label``: what the
    rows' ``elapsed_s`` measures (the engine's includes its validations).
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True) if wall_time else plt.subplots(figsize=(7, 4))
    else:
        fig = axes[0].figure
    axes = list(np.atleast_1d(axes))
    for i, (name, rows) in enumerate(histories.items()):
        val = [r for r in rows if r.get("kind") == "val"]
        if not val:
            continue
        key = "accuracy" if "accuracy" in val[0] else "loss"
        scale = 100 if key == "accuracy" else 1
        y = np.array([scale * r[key] for r in val])
        band = np.array([scale * r.get("ci95", 0.0) for r in val])
        for ax, x_key in zip(axes, ("step", "elapsed_s")):
            x = np.array([r[x_key] for r in val], dtype=float)
            ax.plot(x, y, "-o", ms=3, color=f"C{i}", label=name)
            ax.fill_between(x, y - band, y + band, color=f"C{i}", alpha=0.15)
    ylabel = "validation accuracy (%)" if any(
        "accuracy" in r for rows in histories.values() for r in rows if r.get("kind") == "val") \
        else "validation loss"
    axes[0].set(xlabel="meta-steps", ylabel=ylabel, title=title)
    if len(axes) > 1:
        axes[1].set(xlabel=time_label)
    for ax in axes:
        if reference is not None:
            ax.axhline(reference, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    return fig


def paired_differences(pairs: Sequence, *, ax=None, scale: float = 100.0,
                       xlabel: str = "difference in test accuracy, same episodes (points)",
                       title: str = "") -> Figure:
    """One row per comparison ``a - b`` (``mtl.course.compare.Paired``: ``a``, ``b``, ``mean``,
    ``ci95``), its mean times ``scale`` with the 95% interval, and a line at 0: a row whose interval
    crosses the line is "no difference detected". Close accuracies stay apart on this scale, where
    bars from 0 to 100% would look the same."""
    pairs = list(pairs)
    fig, ax = _axes(ax, figsize=(9, 1.2 + 0.45 * len(pairs)))
    rows = np.arange(len(pairs))
    ax.errorbar([scale * p.mean for p in pairs], rows, xerr=[scale * p.ci95 for p in pairs], fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(yticks=rows, yticklabels=[f"{p.a} - {p.b}" for p in pairs], xlabel=xlabel, title=title)
    ax.set_ylim(len(pairs) - 0.5, -0.5)  # the first pair on top
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes and close it (widgets show figures as images)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def show_source(obj) -> None:
    """Print the source of ``obj`` (a function, class or method of mtl) under a ``# mtl/...py``
    line naming its file, so a listing in a lesson says where the code it shows lives. A decorated
    function (``@torch.no_grad()``) is unwrapped first, so the file named is its own."""
    obj = inspect.unwrap(obj)
    path = Path(inspect.getsourcefile(obj)).resolve()
    root = Path(__file__).resolve().parents[2]
    shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    print(f"# {shown}")
    print(inspect.getsource(obj))


def maml_graph(steps: int = 2, *, ax=None) -> Figure:
    """The computation graph of one MAML step for one task: ``theta`` -> ``phi_1`` -> ... ->
    ``phi_k`` by inner updates ``phi_j = phi_(j-1) - alpha grad L_S(phi_(j-1))``, then the query loss
    ``L_Q(phi_k)``. The meta-gradient flows back along every arrow (red); the dashed ones pass
    through the inner gradients ``grad L_S`` and carry the second-order terms (Hessian-vector
    products) that first-order MAML drops."""
    from matplotlib.patches import FancyArrowPatch

    fig, ax = _axes(ax, figsize=(2.3 * (steps + 2), 3.4))
    ax.set_xlim(-0.7, steps + 1.7)
    ax.set_ylim(-1.25, 1.05)
    ax.axis("off")
    names = ["θ"] + [f"φ{''.join('₀₁₂₃₄₅₆₇₈₉'[int(d)] for d in str(j))}" for j in range(1, steps + 1)]
    box = dict(boxstyle="round,pad=0.35", facecolor="white", edgecolor="black")
    for j, name in enumerate(names):
        ax.text(j, 0.45, name, ha="center", va="center", fontsize=15, bbox=box)
    ax.text(steps + 1, 0.45, f"L_Q({names[-1]})", ha="center", va="center", fontsize=13,
            bbox=dict(box, facecolor="mistyrose"))

    def arrow(a, b, color="black", style="-|>", linestyle="-", rad=0.0):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=14, color=color, linestyle=linestyle,
                                     connectionstyle=f"arc3,rad={rad}", shrinkA=16, shrinkB=16, linewidth=1.5))

    for j in range(steps):
        ax.text(j + 0.5, -0.75, "∇L_S", ha="center", va="center", fontsize=11,
                bbox=dict(box, facecolor="aliceblue"))
        arrow((j, 0.45), (j + 1, 0.45))                           # phi_j = phi_(j-1) - alpha * grad
        arrow((j, 0.45), (j + 0.5, -0.75), rad=0.15)              # the inner gradient at phi_(j-1)
        arrow((j + 0.5, -0.75), (j + 1, 0.45), rad=0.15)
        arrow((j + 0.5, -0.75), (j, 0.45), color="tab:red", linestyle="--", rad=-0.45)  # second order
        arrow((j + 1, 0.6), (j, 0.6), color="tab:red", rad=0.35)                          # identity path
    arrow((steps, 0.45), (steps + 1, 0.45))
    arrow((steps + 1, 0.6), (steps, 0.6), color="tab:red", rad=0.35)
    ax.text((steps + 1) / 2, 0.95, "forward: black · meta-gradient: red · second-order terms: dashed red",
            ha="center", va="center", fontsize=10)
    ax.text((steps + 1) / 2, -1.15, "first-order MAML keeps only the solid red path "
            "(dφ/dθ = identity); MAML keeps the dashed ones too", ha="center", va="center", fontsize=9.5)
    return fig


def label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *, fontsize: float = 8,
                 yerr: Sequence[float] | None = None, max_moves: int = 40) -> list:
    """Write ``labels`` beside the points ``(xs, ys)`` of ``ax``, inside the axes, so that no label
    overlaps another label, a point, or a point's vertical error bar (``yerr``, half-widths in data
    units): each label starts just right of its point and steps down, then up, a line at a time
    until its box is clear (then the same left of the point); a label moved off its point's line
    gets a thin leader line to the point. Call it after the axes' scales and limits are set (the
    boxes are measured on the screen). Returns the annotations (matplotlib ``Annotation``), in the
    order of ``labels``."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    ax.autoscale_view()
    renderer = fig.canvas.get_renderer()
    to_screen = ax.transData.transform
    radius = 4.0  # pixels around a marker that a label keeps clear of
    obstacles = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        px, py = to_screen((x, y))
        obstacles.append(Bbox([[px - radius, py - radius], [px + radius, py + radius]]))
        if yerr is not None and yerr[i]:
            (_, low), (_, high) = to_screen((x, y - yerr[i])), to_screen((x, y + yerr[i]))
            obstacles.append(Bbox([[px - 2, min(low, high)], [px + 2, max(low, high)]]))
    frame = ax.get_window_extent(renderer)  # labels stay inside the axes (not over the title)
    placed, texts = [], {}
    for i in sorted(range(len(labels)), key=lambda i: -ys[i]):  # top to bottom
        # right of the point first, then left of it; where nothing is clear, right on its line
        tries = [(side, move) for side in (1, -1) for move in range(max_moves)] + [(1, 0)]
        for k, (side, move) in enumerate(tries):
            shift = (move + 1) // 2 * (1 if move % 2 else -1) * (fontsize + 2)  # 0, +h, -h, +2h, ... points
            text = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(6 * side, 3 - shift), textcoords="offset points",
                               fontsize=fontsize, va="center", ha="left" if side > 0 else "right",
                               arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=3)
                               if shift else None)
            box = _text_box(text, renderer)
            inside = (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                      and box.y1 <= frame.y1)
            if (inside and not any(box.overlaps(other) for other in placed + obstacles)) or k == len(tries) - 1:
                placed.append(box)
                texts[i] = text
                break
            text.remove()
    return [texts[i] for i in range(len(labels))]


def _text_box(annotation, renderer):
    """The screen box of an annotation's text alone (its own extent includes the leader line)."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)
