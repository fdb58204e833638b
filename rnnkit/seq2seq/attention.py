r"""Attention over the encoder's outputs (Luong et al. 2015; Bahdanau et al. 2015).

For a decoder state :math:`h_t` and encoder outputs :math:`\bar h_s`:

.. math::
    \mathrm{score}(h_t, \bar h_s) = \begin{cases}
        h_t^\top \bar h_s & \text{dot} \\
        h_t^\top W \bar h_s & \text{general} \\
        v_a^\top \tanh(W_1 h_t + W_2 \bar h_s) & \text{additive (concat)}
    \end{cases}, \qquad
    \alpha_{ts} = \operatorname{softmax}_s \mathrm{score}(h_t, \bar h_s), \qquad c_t = \sum_s \alpha_{ts} \bar h_s

Source padding is masked: padded positions get weight exactly 0, and their values never matter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit._checks import check_choice, check_positive_int

KINDS = ("dot", "general", "additive")


class Attention(nn.Module):
    """Score, mask, normalise and average encoder outputs.

    Args:
        query_size: size of the decoder state ``Q``. key_size: size of an encoder output ``K``
            (``dot`` needs ``Q == K``). kind: ``"dot"``, ``"general"`` or ``"additive"``.
        attention_size: hidden size of the additive score (default ``Q``).

    Forward: ``(query [B, Q] or [B, T, Q], keys [B, S, K], mask [B, S] bool, True on real positions,
    prepared=None)`` -> ``(context [B, K] or [B, T, K], weights [B, S] or [B, T, S])``. A decoder that attends to
    the same keys at every step passes ``prepared=attention.prepare(keys)``, computed once: what the scores take
    from the keys alone (the additive score's ``W_2 h_s``), so that a step does not project all S keys again.
    """

    def __init__(self, query_size: int, key_size: int, kind: str = "general", attention_size: int | None = None) -> None:
        super().__init__()
        self.kind = check_choice("kind", kind, KINDS)
        self.query_size = check_positive_int("query_size", query_size)
        self.key_size = check_positive_int("key_size", key_size)
        if kind == "dot" and query_size != key_size:
            raise ValueError(f"dot attention needs query_size == key_size, got {query_size} and {key_size}; "
                             "use kind='general' or 'additive'")
        if kind == "general":
            self.weight = nn.Linear(key_size, query_size, bias=False)  # W h_s
        elif kind == "additive":
            size = attention_size or query_size
            self.query_projection = nn.Linear(query_size, size, bias=False)  # W_1
            self.key_projection = nn.Linear(key_size, size, bias=False)  # W_2
            self.v = nn.Linear(size, 1, bias=False)  # v_a

    def prepare(self, keys: Tensor) -> Tensor | None:
        """What the scores take from ``keys [B, S, K]`` alone, for ``forward(..., prepared=)``: the additive
        score's key projection ``[B, S, A]``; None for the others (dot needs none, and general projects the
        query instead, which costs S times less)."""
        return self.key_projection(keys) if self.kind == "additive" else None

    def scores(self, query: Tensor, keys: Tensor, prepared: Tensor | None = None) -> Tensor:
        """Unmasked scores ``[B, T, S]`` for ``query [B, T, Q]`` and ``keys [B, S, K]`` (``prepared``: see
        :meth:`prepare`)."""
        if self.kind == "dot":
            return query @ keys.transpose(1, 2)
        if self.kind == "general":
            # h^T (W k) = (W^T h)^T k: project the T queries, or the S keys, whichever are fewer (a decoder step
            # has one query: B*Q*K multiply-adds instead of B*S*Q*K, which at every step was the decoder's
            # largest product)
            if query.shape[1] <= keys.shape[1]:
                return (query @ self.weight.weight) @ keys.transpose(1, 2)
            return query @ self.weight(keys).transpose(1, 2)
        projected = self.key_projection(keys) if prepared is None else prepared  # [B, S, A]
        hidden = torch.tanh(self.query_projection(query)[:, :, None] + projected[:, None])  # [B, T, S, A]
        return self.v(hidden).squeeze(-1)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None,
                prepared: Tensor | None = None) -> tuple[Tensor, Tensor]:
        single = query.dim() == 2
        if single:
            query = query[:, None]  # [B, 1, Q]
        scores = self.scores(query, keys, prepared)  # [B, T, S]
        if mask is not None:
            if mask.shape != keys.shape[:2]:
                raise ValueError(f"mask must have shape [B, S] = {list(keys.shape[:2])}, got {list(mask.shape)}")
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = weights @ keys  # [B, T, K]
        return (context[:, 0], weights[:, 0]) if single else (context, weights)
