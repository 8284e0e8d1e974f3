"""The inner loop and what batches it over tasks: the mathematics every algorithm is built on.

- ``inner.py``: ``adapt`` (one task's inner loop), ``adapt_batch``, ``maml_loss`` / ``maml_outputs``
  (the outer objective of a batch of tasks), ``map_tasks`` (tasks batched by ``torch.func.vmap`` or
  looped, or with the shared first step; ``strategy="auto"`` chooses by measurement).
- ``auto.py``: ``strategy="auto"``: every strategy that can run the model timed once per setting,
  the fastest whose meta-gradient agrees with the loop's kept.
- ``shared_step.py``: inner step 0 of a batch of tasks as one merged forward and backward, each
  task's gradient split out by a rule per layer kind.
- ``checks.py``: the checks of settings and inputs (an ``MTLError`` naming the fix) and the
  argument types the inner loop's modules share.
- ``norms.py``: batch, instance and layer norm that stay exact under ``vmap`` (``exact_norms``).
- ``kernels.py``: a faster CPU max-pool with torch's values and derivatives, which the inner
  loop's forward passes run through (``cpu_kernels``).
- ``heads.py``: the shared heads: linear logits, prototype (centroid) logits, the linear-head
  inner loop.
"""
from __future__ import annotations

from mtl.core import auto, checks, heads, inner, kernels, norms, shared_step

__all__ = ["inner", "auto", "shared_step", "checks", "norms", "kernels", "heads"]
