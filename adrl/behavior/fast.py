"""Batched float32 numpy inference for adrl models: the network folded into lookup tables and a few matmuls.

Folding (exact up to float rounding) removes everything that does not depend on the row:

* the first layer's contribution of every embedding becomes a table of pre-activations, and tables of fields that
  always appear together are summed into joint tables: ``A[segment, hour]`` and ``B[creative, slot, delay]`` (the
  creative fixes the category; the first layer's bias and the dense standardisation offset go into ``B``);
* the dense standardisation is folded into the first layer's weights, which act on the raw observation;
* the factorization term splits into a table ``F[segment, creative]`` and a per-creative linear map of the signals;
* the wide part becomes a per-segment linear map of the raw inputs and a ``[segment, hour]`` table of logits.

What remains per batch is one (n, obs_dim + a) @ (obs_dim + a, h) matmul (a: the action's dense inputs), two table
gathers, the MLP's later layers and a sigmoid: no autograd, no torch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import numpy as np
from threadpoolctl import ThreadpoolController

from adrl.behavior.inputs import AdrlEncoder
from adrl.behavior.net import BehaviorNet
from adrl.scenario import HOURS_PER_DAY

_MAX_LOGIT = 30.0


def _np(t: object) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)  # type: ignore[attr-defined]


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


class FastPredictor:
    """(pCTR, pCTCVR, pLeave) for adrl observations and actions, folded from a :class:`BehaviorNet`.

    ``blas_threads`` caps BLAS threads during a call (None: leave as is). One is the default: these matmuls are
    too small to gain from threads, and oversubscribed BLAS threads on a busy machine (an environment, other
    processes) are many times slower than one.
    """

    def __init__(self, net: BehaviorNet, encoder: AdrlEncoder, *, blas_threads: int | None = 1) -> None:
        layout, spec = encoder.layout, encoder.spec
        self.blas_threads = blas_threads
        e_dim = net.embedding_dim
        self.obs_dim = layout.obs_dim
        self.n_creatives, self.n_slots, self.n_delays = len(layout.creatives), len(layout.slots), len(layout.delays)
        self.category_of = encoder.category_of
        self.raw_caps = encoder.raw_caps  # upper bounds of x's columns (count inputs capped at the logged range)
        self.unused_raw, self.delay_unused = encoder.unused_raw, encoder.delay_unused
        self.delay_hours = np.asarray(layout.delays, dtype=np.float32)
        self.hour_col = layout.index("hour")
        self.since_col = layout.index("hours_since_last_ad")
        self.creative0 = layout.creative_count_col
        self.signal_cols = np.array([layout.index(n) for n in encoder.signal_names], dtype=np.int64)
        self.signal0 = int(self.signal_cols[0])

        linears = [m for m in net.trunk if hasattr(m, "weight")]
        w1, b1 = _np(linears[0].weight), _np(linears[0].bias)  # (h, in)
        n_cat = len(spec.categorical)
        tables = {
            name: _np(net.embeddings[name].weight) @ w1[:, i * e_dim : (i + 1) * e_dim].T
            for i, name in enumerate(spec.cat_names)
        }
        w_dense = w1[:, n_cat * e_dim :]  # (h, n_dense)
        mean, std = _np(net.dense_mean), _np(net.dense_std)
        w_scaled = w_dense / std[None, :]
        offset = b1 - w_scaled @ mean
        n_obs_dense = len(encoder.obs_dense_cols)
        self.n_action_dense = len(encoder.action_dense)
        self.exposure_cols = layout.exposure_cols
        self.exposure_decay = layout.exposure_decay_of_delay
        w_full = np.zeros((self.obs_dim + self.n_action_dense, w1.shape[0]))
        w_full[encoder.obs_dense_cols] = w_scaled[:, :n_obs_dense].T
        w_full[self.obs_dim :] = w_scaled[:, n_obs_dense:].T
        self.w_full = np.ascontiguousarray(w_full, dtype=np.float32)
        seg_hour = tables["segment"][:, None, :] + tables["hour"][None, :, :]
        self.table_a = np.ascontiguousarray(seg_hour.reshape(-1, w1.shape[0]), dtype=np.float32)
        cre = tables["creative"] + tables["category"][self.category_of]
        b = cre[:, None, None, :] + tables["slot"][None, :, None, :] + tables["delay"][None, None, :, :] + offset
        self.table_b = np.ascontiguousarray(b.reshape(-1, w1.shape[0]), dtype=np.float32)
        self.layers = [
            (np.ascontiguousarray(_np(m.weight).T, dtype=np.float32), _np(m.bias).astype(np.float32))
            for m in linears[1:]
        ]
        self.w_head = np.ascontiguousarray(_np(net.head.weight).T, dtype=np.float32)  # (h_last, 3)

        # factorization term: u = U[seg] + P (sig - m) / s,  v = V[creative] + V[category],  logits += F (u ⊙ v)
        sig_idx = [spec.dense_index(n) for n in encoder.signal_names]
        p = _np(net.fm_user_dense.weight) / std[sig_idx][None, :]  # (fm, K)
        u_seg = _np(net.fm_user["segment"].weight) - (p @ mean[sig_idx])[None, :]  # (S, fm)
        v = _np(net.fm_item["creative"].weight) + _np(net.fm_item["category"].weight)[self.category_of]  # (C, fm)
        f = _np(net.fm_out.weight)  # (3, fm)
        fm_cat = np.einsum("sj,cj,hj->sch", u_seg, v, f) + _np(net.head.bias)
        self.table_f = np.ascontiguousarray(fm_cat.reshape(-1, 3), dtype=np.float32)  # index seg * C + creative
        g = np.einsum("jk,cj,hj->kch", p, v, f)  # (K, C, 3)
        self.w_signal = np.ascontiguousarray(g.reshape(len(sig_idx), -1), dtype=np.float32)

        # wide part: G[seg] (x - m) / s becomes raw x @ W_wide[:, seg] minus a per-segment offset (into table_f),
        # and T[seg, hour] a table of logits
        self.n_segments = len(layout.segments)
        self.w_wide: np.ndarray | None = None
        self.table_t: np.ndarray | None = None
        if net.wide:
            n_dense = len(mean)
            gw = _np(net.wide_dense.weight).reshape(self.n_segments, n_dense, 3) / std[None, :, None]
            w_wide = np.zeros((self.obs_dim + self.n_action_dense, self.n_segments, 3))
            w_wide[encoder.obs_dense_cols] = gw[:, :n_obs_dense].transpose(1, 0, 2)
            w_wide[self.obs_dim :] = gw[:, n_obs_dense:].transpose(1, 0, 2)
            self.w_wide = np.ascontiguousarray(w_wide.reshape(w_wide.shape[0], -1), dtype=np.float32)
            fm_cat -= np.einsum("sdh,d->sh", gw, mean)[:, None, :]
            self.table_f = np.ascontiguousarray(fm_cat.reshape(-1, 3), dtype=np.float32)
            self.table_t = np.ascontiguousarray(_np(net.wide_hour.weight), dtype=np.float32)  # seg * 24 + hour

    def logits(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(n, 3) click, cvr and leave logits; ``obs`` float32 (n, obs_dim), ``action`` int (n, 3), both checked."""
        n = obs.shape[0]
        d, s, c = action[:, 0], action[:, 1], action[:, 2]
        rows = np.arange(n)
        seg = obs[:, 0].astype(np.intp)
        delay_hours = self.delay_hours[d]
        x = np.empty((n, self.obs_dim + self.n_action_dense), dtype=np.float32)
        x[:, : self.obs_dim] = obs
        x[:, self.obs_dim] = obs[rows, self.creative0 + c]
        x[:, self.obs_dim + 1] = np.minimum(obs[:, self.since_col] + delay_hours, HOURS_PER_DAY)
        x[:, self.obs_dim + 2] = obs[rows, self.signal0 + self.category_of[c]]
        x[:, self.obs_dim + 3 :] = obs[:, self.exposure_cols] * self.exposure_decay[d][:, None]  # as encode_actions
        if self.raw_caps is not None:
            np.minimum(x, self.raw_caps, out=x)
        if self.unused_raw.size:
            x[:, self.unused_raw] = 0.0  # inputs the model does not read (held at 0 in training too)
        if self.delay_unused:
            d = np.zeros_like(d)
        hour = (obs[:, self.hour_col] + delay_hours).astype(np.intp) % HOURS_PER_DAY
        with self._blas_limit():
            h = x @ self.w_full
            h += np.take(self.table_a, seg * HOURS_PER_DAY + hour, axis=0)
            h += np.take(self.table_b, (c * self.n_slots + s) * self.n_delays + d, axis=0)
            np.maximum(h, 0.0, out=h)
            for w, b in self.layers:
                h = h @ w
                h += b
                np.maximum(h, 0.0, out=h)
            out = h @ self.w_head
            out += np.take(self.table_f, seg * self.n_creatives + c, axis=0)
            q = (obs[:, self.signal_cols] @ self.w_signal).reshape(n, self.n_creatives, 3)
            if self.w_wide is not None and self.table_t is not None:
                wide = (x @ self.w_wide).reshape(n, self.n_segments, 3)
                out += wide[rows, seg]
                out += np.take(self.table_t, seg * HOURS_PER_DAY + hour, axis=0)
        out += q[rows, c]
        return out

    def _blas_limit(self) -> AbstractContextManager[object]:
        if self.blas_threads is None:
            return nullcontext()
        return _controller().limit(limits=self.blas_threads, user_api="blas")

    def predict(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pCTR, pCTCVR, pLeave), each float32 (n,)."""
        z = self.logits(obs, action)
        np.clip(z, -_MAX_LOGIT, _MAX_LOGIT, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        return np.ascontiguousarray(z[:, 0]), z[:, 0] * z[:, 1], np.ascontiguousarray(z[:, 2])
