"""The networks: ``Conv4`` and ``MLP`` (``conv.py``, pure functions of their parameters, batch norm
on the current batch) and ``ResNet12`` (``resnet.py``, the pre-trained backbone of meta-transfer
learning, with running statistics); ``InContextTransformer`` (``in_context.py``), a transformer over a
task's support set and queries.
"""
from __future__ import annotations

from mtl.models.conv import MLP, BatchNorm, Conv4, conv_block
from mtl.models.in_context import InContextTransformer, context_mask, context_tokens
from mtl.models.resnet import DEFAULT_CHANNELS, WIDTHS, ResNet12

__all__ = ["Conv4", "MLP", "BatchNorm", "conv_block", "ResNet12", "DEFAULT_CHANNELS", "WIDTHS",
           "InContextTransformer", "context_tokens", "context_mask"]
