"""The inner loop and what batches it over tasks: the mathematics every algorithm is built on.

- ``inner.py``: ``adapt`` (one task's inner loop), ``adapt_batch``, ``maml_loss`` / ``maml_outputs``
  (the outer objective of a batch of tasks), ``map_tasks`` (tasks batched by ``torch.func.vmap`` or
  looped; ``strategy="auto"``: vmap on CUDA, the loop elsewhere).
- ``checks.py``: the checks of settings and inputs (an ``MTLError`` naming the fix) and the
  argument types the inner loop's modules share.
- ``norms.py``: batch, instance and layer norm that stay exact under ``vmap`` (``exact_norms``).
- ``heads.py``: the shared heads: linear logits, prototype (centroid) logits, the linear-head
  inner loop.
"""
from __future__ import annotations

from mtl.core import checks, heads, inner, norms

__all__ = ["inner", "checks", "norms", "heads"]
