"""The networks: ``Conv4`` and ``MLP`` (``conv.py``, pure functions of their parameters, batch norm
on the current batch) and ``ResNet12`` (``resnet.py``, the pre-trained backbone of meta-transfer
learning, with running statistics).
"""
from __future__ import annotations

from mtl.models.conv import MLP, BatchNorm, Conv4, conv_block
from mtl.models.resnet import DEFAULT_CHANNELS, WIDTHS, ResNet12

__all__ = ["Conv4", "MLP", "BatchNorm", "conv_block", "ResNet12", "DEFAULT_CHANNELS", "WIDTHS"]
