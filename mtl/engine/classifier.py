"""A trained learner on a task of your own: ``fit`` a few labelled images, ``predict`` new ones.

    clf = mtl.FewShotClassifier.from_checkpoint("runs/maml-5w1s/best.pt")
    clf.fit(["a1.png", "b1.png", ...], ["a", "b", ...])       # the support set: K images per class
    clf.predict(["new.png"])                                  # -> ["b"]; predict_proba: [n, N]

Images are paths, PIL images or tensors (``[C, H, W]`` / ``[n, C, H, W]``, uint8 0-255 or float
0-1) and are prepared as the checkpoint's training images were: its image size and channels, and
Omniglot's polarity (mtl stores Omniglot as bright strokes on black; a drawing of dark ink on white
paper is inverted to match). Every learner the engine trains works: the MAML family adapts its
weights on the support set (``steps`` inner steps, default the run's ``test_inner_steps``),
ProtoNet and nearest centroid compare embeddings (Proto-MAML starts its head from them),
meta-transfer learning and the fine-tuning baselines fit their head. A learner whose head has a
fixed number of outputs (MAML, Reptile, ANIL, Meta-SGD, a meta-learned MTL head) needs that many
classes and says so (``Learner.set_ways``).

Batch norm of the Conv4 learners is transductive (as in MAML): the query images of one
``predict`` call are normalised together, so predict a task's queries in one call.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from mtl.data._decode import check_pixels, to_8bit
from mtl.errors import MTLError, TaskBatchError

__all__ = ["FewShotClassifier", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class FewShotClassifier:
    """``learner`` (an engine learner with ``predict``) with the ``config`` it was trained with."""

    def __init__(self, learner: nn.Module, config, *, steps: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        config = config.resolved()
        if config.regression:
            raise MTLError("FewShotClassifier classifies images; this checkpoint was trained on "
                           f"{config.dataset} regression")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise MTLError(f"steps must be a whole number >= 0, got {steps!r}")
        self.learner, self.config = learner.to(device).eval(), config
        self.device = torch.device(device)
        self.steps = config.test_inner_steps if steps is None else steps
        self.size = int(config.image_size)
        self.channels = int(config.channels)
        self.invert = config.spec.inverted  # the training images' polarity
        self.classes_: list = []
        self._support: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, steps: int | None = None,
                        device: str | None = None) -> "FewShotClassifier":
        """Load a checkpoint of ``python -m mtl train`` (a file, or a run folder: best.pt, else last.pt)."""
        from mtl.engine.build import load_learner

        loaded = load_learner(path, device or "cpu")
        return cls(loaded.learner, loaded.config, steps=steps, device=loaded.device)

    # ------------------------------------------------------------------------------- images
    def prepare(self, images: Any) -> Tensor:
        """float32 ``[n, C, S, S]`` in [0, 1], as the training images were."""
        if isinstance(images, Tensor):
            batch = images[None] if images.dim() == 3 else images
            if batch.dim() != 4:
                raise TaskBatchError(f"image tensors must be [C, H, W] or [n, C, H, W], got "
                                     f"{tuple(images.shape)}")
            return torch.stack([self._tensor_image(t) for t in batch]).to(self.device)
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if not isinstance(images, Sequence) or not len(images):
            raise TaskBatchError("give a list of images (paths, PIL images or tensors), at least one")
        return torch.stack([self._one(image) for image in images]).to(self.device)

    def _one(self, image: Any) -> Tensor:
        if isinstance(image, Tensor):
            return self._tensor_image(image)
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    check_pixels(opened, image)
                    return self._pil(opened, image)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise TaskBatchError(f"{image} is not an image Pillow can read ({error})") from None
        if isinstance(image, Image.Image):
            return self._pil(image)
        raise TaskBatchError(f"an image must be a path, a PIL image or a tensor, got {type(image).__name__}")

    def _pil(self, image: Image.Image, name: object = "an image") -> Tensor:
        check_pixels(image, name)
        source_mode = image.mode
        image, rescaled = to_8bit(image, "L" if self.channels == 1 else "RGB")
        if rescaled:
            warnings.warn(f"{name} has {source_mode} pixels (16-bit or float): they were scaled by "
                          "their range to the 8 bits the model was trained on", stacklevel=3)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BOX)
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if self.invert:
            pixels = 255 - pixels
        return torch.from_numpy(pixels.copy()).float().div_(255)

    def _tensor_image(self, image: Tensor) -> Tensor:
        expected = (self.channels, self.size, self.size)
        if tuple(image.shape) != expected:
            raise TaskBatchError(
                f"an image tensor of shape {tuple(image.shape)} does not fit this checkpoint, which "
                f"takes {expected} ({self.channels} channel(s), {self.size} x {self.size} pixels): "
                "resize it, or pass paths/PIL images, which are prepared for you")
        if image.dtype == torch.uint8:
            return image.float().div(255)
        if not image.is_floating_point():
            raise TaskBatchError(f"an image tensor of dtype {image.dtype} is ambiguous: pass uint8 "
                                 "(0..255) or floats in [0, 1]")
        image = image.float()
        low, high = float(image.min()), float(image.max())
        if not (0 <= low and high <= 1):
            raise TaskBatchError(f"float image tensors must hold values in [0, 1], got {low:g}..{high:g}: "
                                 "divide 0..255 pixels by 255 (or pass them as uint8)")
        return image

    # ------------------------------------------------------------------------------- the task
    def fit(self, images: Any, labels: Sequence) -> "FewShotClassifier":
        """Remember the support set: ``images`` with one label (any hashable) each."""
        x = self.prepare(images)
        labels = list(labels)
        if len(labels) != x.shape[0]:
            raise TaskBatchError(f"{x.shape[0]} images but {len(labels)} labels: one label per image")
        classes = list(dict.fromkeys(labels))
        if len(classes) < 2:
            raise TaskBatchError(f"the support set has {len(classes)} class; a task needs at least 2")
        self.learner.set_ways(len(classes))  # resized, or MTLError naming the fix
        order = sorted(range(len(labels)), key=lambda i: classes.index(labels[i]))
        self.classes_ = classes
        y = torch.tensor([classes.index(labels[i]) for i in order], device=self.device)
        self._support = (x[order], y)
        return self

    def predict_proba(self, images: Any) -> Tensor:
        """Class probabilities ``[n, N]`` (columns in the order of ``classes_``)."""
        if self._support is None:
            raise MTLError("call fit(images, labels) with the support set first")
        from mtl.data.episodes import TaskBatch

        query = self.prepare(images)
        sx, sy = self._support
        batch = TaskBatch(sx[None], sy[None], query[None],
                          torch.zeros(1, query.shape[0], dtype=torch.long, device=self.device))
        logits = self.learner.predict(batch, inner_steps=self.steps)[0]
        return logits.float().softmax(-1)

    def predict(self, images: Any) -> list:
        """The predicted label of each image."""
        return [self.classes_[i] for i in self.predict_proba(images).argmax(-1).tolist()]


def folder_images(root: str | Path) -> tuple[list[Path], list[str]]:
    """``(image paths, class names)`` of ``root/<class>/<image>``, sorted; hidden files ignored."""
    from mtl.data.folder import scan

    classes = scan(root)
    paths = [p for files in classes.values() for p in files]
    labels = [name for name, files in classes.items() for _ in files]
    return paths, labels


def query_images(target: str | Path | Sequence) -> tuple[list[Path], list[str] | None]:
    """Query images: a folder of class sub-folders (labelled), a folder of images, or files."""
    if isinstance(target, (str, Path)) and Path(target).is_dir():
        root = Path(target)
        if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            return folder_images(root)
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise MTLError(f"{root} holds no images")
        return files, None
    targets = [target] if isinstance(target, (str, Path)) else list(target)
    missing = [str(t) for t in targets if not Path(t).is_file()]
    if missing:
        raise MTLError(f"no such image file: {missing[0]}")
    return [Path(t) for t in targets], None
