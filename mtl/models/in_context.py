"""A transformer that learns in context: it reads a task's labelled support set and its queries as
one sequence and outputs the queries' labels, with no gradient step at test time (black-box
meta-learning: Santoro et al. 2016, Mishra et al. 2018; in the form of Fifty et al. 2024, CAML).

One token per example: its features from ``encoder``, joined with a label code, for a support
example its label (one-hot over ``labels`` slots; for regression ``[y, 1]``), for a query an empty
label (zeros)::

    tokens = [z_1, code(y_1)], ..., [z_M, code(y_M)], [q_1, 0], ..., [q_Q, 0]     # [M + Q, D + L]

There is no positional encoding, so the output does not depend on the order of the support set;
the attention mask (``context_mask``) lets every token attend to the support tokens only, so one
query's output does not depend on the other queries (a query's own features reach its output
through the residual connections). The attention layers start as similarity matching (their query
and key maps near the identity, the query-key half of Trockman & Kolter 2023's mimetic
initialisation; the value and output maps start near the identity too), so from the first step a
query attends most to the support examples that look like it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InContextTransformer", "context_tokens", "context_mask"]


def context_tokens(support_z: Tensor, support_code: Tensor, query_z: Tensor) -> Tensor:
    """The sequence: ``support_z [B, M, D]`` with ``support_code [B, M, L]``, then ``query_z
    [B, Q, D]`` with an empty (zero) code -> ``[B, M + Q, D + L]``."""
    empty = support_code.new_zeros(*query_z.shape[:-1], support_code.shape[-1])
    return torch.cat([torch.cat([support_z, support_code], -1), torch.cat([query_z, empty], -1)], 1)


def context_mask(support: int, queries: int, device: torch.device | str | None = None) -> Tensor:
    """bool ``[M + Q, M + Q]``, True where token ``i`` may **not** attend to token ``j``: every token
    attends to the ``support`` tokens and to no query token (not even a query to itself: its own
    token would be its most similar key, and its features reach its output through the residual)."""
    blocked = torch.zeros(support + queries, support + queries, dtype=torch.bool, device=device)
    blocked[:, support:] = True
    return blocked


class InContextTransformer(nn.Module):
    """``(support_x [B, M, ...], support_y [B, M], query_x [B, Q, ...]) -> [B, Q, outputs]``.

    Args:
        encoder: ``[n, ...] -> [n, features]``, applied to every example on its own (use a network
            without batch statistics, or a query's features would depend on the other images).
        features: D, the encoder's output size.
        labels: L, the label slots of a token: the most ways it can take (classification), or 2
            for regression (``[y, 1]``; a query's ``[0, 0]`` is then told apart from ``y = 0``).
        outputs: the readout per query: ``labels`` logits (classification) or 1 value (regression).
        width, heads, layers: the transformer (pre-norm ``nn.TransformerEncoderLayer``, no dropout).
    """

    def __init__(self, encoder: nn.Module, features: int, labels: int, outputs: int, *,
                 width: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.labels, self.outputs = labels, outputs
        self.regression = outputs == 1
        self.embed = nn.Linear(features + labels, width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.readout = nn.Linear(width, outputs)
        self.features = features
        with torch.no_grad():  # attention starts as similarity matching
            for layer in self.layers:
                eye = torch.eye(width)
                layer.self_attn.in_proj_weight.view(3, width, width).mul_(0.1).add_(eye)  # W_Q, W_K, W_V
                layer.self_attn.out_proj.weight.mul_(0.1).add_(eye)

    def code(self, y: Tensor) -> Tensor:
        """A support label as a token's label part: one-hot ``[B, M] -> [B, M, L]``, or for
        regression ``[B, M, 1] -> [B, M, 2]`` (``[y, 1]``)."""
        if self.regression:
            return torch.cat([y, torch.ones_like(y)], -1)
        return F.one_hot(y, self.labels).float()

    def embed_examples(self, x: Tensor) -> Tensor:
        """``[B, n, ...] -> [B, n, D]``: the encoder on every example (all tasks in one call)."""
        return self.encoder(x.flatten(0, 1)).flatten(1).unflatten(0, x.shape[:2])

    def sequence(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """The transformer's input ``[B, M + Q, width]`` and its attention mask ``[M + Q, M + Q]``."""
        support_z, query_z = self.embed_examples(support_x), self.embed_examples(query_x)
        # centred and scaled by the support set's statistics (not the queries'): features that all
        # images share drop out, and a query's token still depends only on its own image
        mean = support_z.mean(1, keepdim=True)
        scale = (support_z - mean).pow(2).mean((1, 2), keepdim=True).add(1e-5).sqrt()
        tokens = context_tokens((support_z - mean) / scale, self.code(support_y), (query_z - mean) / scale)
        return self.embed(tokens), context_mask(support_x.shape[1], query_x.shape[1], tokens.device)

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        h, mask = self.sequence(support_x, support_y, query_x)
        for layer in self.layers:
            h = layer(h, src_mask=mask)
        out = self.norm(h[:, support_x.shape[1]:])
        if self.regression:
            return self.readout(out)
        # tied to the label embedding: a query scores label k by how much of label k's input
        # direction its output holds (plus a learned linear readout)
        return self.readout(out) + out @ self.embed.weight[:, self.features:]

    def attention(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                  layer: int = -1) -> Tensor:
        """Attention weights of ``layer`` (averaged over heads): ``[B, M + Q, M + Q]``, row ``i``
        how much token ``i`` attends to each token (support first, then queries)."""
        h, mask = self.sequence(support_x, support_y, query_x)
        index = range(len(self.layers))[layer]
        for block in self.layers[:index]:
            h = block(h, src_mask=mask)
        block = self.layers[index]
        x = block.norm1(h)
        return block.self_attn(x, x, x, attn_mask=mask, need_weights=True,
                               average_attn_weights=True)[1]
