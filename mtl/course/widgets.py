"""Interactive explorers for the lessons (ipywidgets 8, JupyterLab 4).

Figures are shown as ``ipywidgets.Image`` (PNG bytes rendered in the kernel), not through an
``Output`` widget: the picture updates without a plotting backend in the browser, and a test can
check in the kernel that it changed (``explorer.image.value``). Where no widget can run (a
notebook viewed statically, the HTML copies of ``python -m mtl course run``) an explorer shows its
current figure instead: its output carries that figure as ``image/png`` and its caption as text.

- ``inner_loop_explorer(tasks)``: lesson 01; inner learning rate and number of steps move, the
  task paths and the best initialisation follow.
- ``episode_browser(dataset)``: lesson 02; ways, shots and episode seed move, the support/query
  grid follows.
"""
from __future__ import annotations

import base64

import ipywidgets as W
import matplotlib.pyplot as plt

from mtl.course import quadratic, viz

__all__ = ["Explorer", "inner_loop_explorer", "episode_browser"]


class Explorer(W.VBox):
    """A column of controls above a figure; ``redraw()`` re-renders it from the controls' values.

    ``controls`` (name -> widget), ``image`` (the figure), ``caption`` (one line of text under it),
    ``draw(**values) -> (figure, caption)``. The CSS class ``mtl-explorer`` marks it in the page.
    """

    def __init__(self, controls: dict, draw, *, width: str = "720px") -> None:
        self.controls, self._draw = controls, draw
        self.image = W.Image(format="png", layout=W.Layout(width=width))
        self.caption = W.HTML()
        super().__init__([W.HBox(list(controls.values())), self.image, self.caption])
        self.add_class("mtl-explorer")
        for control in controls.values():
            control.observe(lambda _change: self.redraw(), names="value")
        self.redraw()

    def _repr_mimebundle_(self, **kwargs):
        """The live widget, plus its current figure (``image/png``) and caption (``text/plain``) for
        the views that cannot run a widget."""
        data = super()._repr_mimebundle_(**kwargs)
        data["text/plain"] = f"{type(self).__name__}: {self.caption.value}"
        data["image/png"] = base64.b64encode(self.image.value).decode()
        return data

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def redraw(self) -> None:
        fig, caption = self._draw(**self.values())
        self.image.value = viz.figure_png(fig)
        self.caption.value = caption


def inner_loop_explorer(tasks: quadratic.QuadraticTasks, *, lr: float = 0.1, steps: int = 1) -> Explorer:
    """Sliders for the inner step size (up to 90% of the stable limit) and the number of steps."""
    limit = 0.9 * quadratic.max_stable_lr(tasks)
    controls = {
        "lr": W.FloatSlider(value=min(lr, limit), min=0.0, max=round(limit, 3), step=0.005, readout_format=".3f",
                            description="inner lr α", continuous_update=False),
        "steps": W.IntSlider(value=steps, min=0, max=10, description="steps k", continuous_update=False),
    }

    def draw(lr: float, steps: int):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        viz.quadratic_family(tasks, lr, steps, ax=axes[0])
        viz.meta_landscape(tasks, lr, steps, ax=axes[1], methods=("average", "maml", "first_order"))
        fig.tight_layout()
        start = quadratic.optimal_init(tasks, lr, steps, "maml").tolist()
        average = quadratic.optimal_init(tasks, method="average").tolist()
        caption = (f"best start for adaptation θ₀* = ({start[0]:.3f}, {start[1]:.3f}); "
                   f"best average solution = ({average[0]:.3f}, {average[1]:.3f})")
        return fig, caption

    return Explorer(controls, draw)


def episode_browser(dataset, *, ways: int = 5, shots: int = 1, queries: int = 2, seed: int = 0) -> Explorer:
    """Draw episodes of ``dataset`` (a ``mtl.data.FewShotDataset``) with ``EpisodeSampler``."""
    from mtl.data import EpisodeSampler

    num_classes = dataset.images.shape[0]
    controls = {
        "ways": W.IntSlider(value=ways, min=2, max=min(20, num_classes), description="ways N",
                            continuous_update=False),
        "shots": W.IntSlider(value=shots, min=1, max=5, description="shots K", continuous_update=False),
        "seed": W.IntSlider(value=seed, min=0, max=99, description="episode", continuous_update=False),
    }

    def draw(ways: int, shots: int, seed: int):
        sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, seed=seed)
        batch, classes = sampler.sample(1, return_classes=True)
        names = [dataset.class_names[int(c)] for c in classes[0]]
        fig = viz.episode_grid(batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0],
                               class_names=names)
        return fig, f"{ways}-way {shots}-shot episode #{seed} from {num_classes} classes ({dataset.split})"

    return Explorer(controls, draw, width="auto")
