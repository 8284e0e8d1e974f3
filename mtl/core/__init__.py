"""The inner loop and what batches it over tasks: the mathematics every algorithm is built on.

- ``inner.py``: ``adapt`` (one task's inner loop), ``adapt_batch``, ``maml_loss`` / ``maml_outputs``
  (the outer objective of a batch of tasks), ``map_tasks`` (tasks batched by ``torch.func.vmap`` or
  looped, ``strategy="auto"`` chooses by measurement).
- ``norms.py``: batch, instance and layer norm that stay exact under ``vmap`` (``exact_norms``).
- ``kernels.py``: a faster CPU max-pool with torch's values and derivatives, which the inner
  loop's forward passes run through (``cpu_kernels``).
- ``heads.py``: the shared heads: linear logits, prototype (centroid) logits, the linear-head
  inner loop.
"""
from __future__ import annotations

from mtl.core import heads, inner, kernels, norms

__all__ = ["inner", "norms", "kernels", "heads"]
