"""PPO on the native batched env, in the manner of CleanRL: factored (delay, slot, creative) head, GAE, obs norm.

Policy π(a|x) = π(delay|x) · π(slot|x) · π(creative|x) (three categorical heads on one MLP trunk, as in
:mod:`adrl.agents.reinforce`) and a separate value MLP. Each update collects ``rollout_steps`` steps of every
sub-env of a Gymnasium vector env (next-step autoreset: the step after ``terminated | truncated`` is a reset and is
masked out), computes advantages with GAE(γ, λ) (a finished day, left or ended, has value 0 after it; the hour is
in the observation, so the day's end is part of the state), and takes ``update_epochs`` passes of minibatch SGD on

    L = − mean[min(ρ Â, clip(ρ, 1 − ε, 1 + ε) Â)] + c_v · mean[(V(x) − R)²] − c_H · mean[H(π(·|x))]

with ρ = π(a|x) / π_old(a|x) and Â normalised per minibatch (Schulman et al. 2017). A run may start from another
PPO policy's weights (:meth:`PPOAgent.warm_start`, ``adrl train --init-from``: fine-tuning a deployed policy on new
data); with ``anchor_coef`` > 0 the loss adds ``anchor_coef · mean[KL(π_0(·|x) ‖ π(·|x))]`` (summed over the three
heads) to that starting policy π_0, a trust region that keeps the fine-tuned policy near the one whose rollouts
the data hold. Network inputs are
:class:`~adrl.agents.base.NeuralFeatures` standardised by running mean and variance (updated from each rollout,
frozen inside an update, saved with the weights). Torch is seeded once per ``learn`` call from the agent's
generator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from adrl.agents.base import MAX_HIDDEN, EpisodeTracker, FactoredPolicy, Learner, NeuralFeatures, check_obs
from adrl.agents.registry import agent_params, read_learner, register_kind, write_learner_manifest
from adrl.agents.reinforce import FactoredPolicyNet, value_net
from adrl.agents.torch_io import load_torch_state, save_torch_state
from adrl.behavior.training import torch_threads
from adrl.errors import ArtifactError, ConfigError
from adrl.scenario import Scenario


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (user-decisions are the unit of every budget)."""

    hidden: int = 128
    lr: float = 3e-3
    rollout_steps: int = 8  # steps of every sub-env per update
    update_epochs: int = 4
    n_minibatches: int = 4
    gamma: float = 1.0  # a day is short and ends; the return per user-day is the objective
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.003
    grad_clip: float = 0.5
    anneal_lr: bool = True
    log_every: int = 200_000
    threads: int = 1  # torch threads while learning: small nets gain little from more, lose a lot on busy cores
    anchor_coef: float = 0.0  # KL to the policy a warm-started run began from; no effect without a warm start

    def __post_init__(self) -> None:
        for name in ("hidden", "rollout_steps", "update_epochs", "n_minibatches", "log_every", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.hidden > MAX_HIDDEN:  # checked before the network is allocated
            raise ValueError(f"hidden must be at most {MAX_HIDDEN}, got {self.hidden}")
        for name in ("lr", "clip_coef", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("value_coef", "entropy_coef", "anchor_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


class RunningNorm(nn.Module):
    """Running mean and variance of the network inputs (Chan et al. parallel update); buffers, so saved with them."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: np.ndarray) -> None:
        b = torch.from_numpy(x.astype(np.float64))
        b_mean, b_var, n = b.mean(0), b.var(0, unbiased=False), torch.tensor(float(b.shape[0]), dtype=torch.float64)
        delta, total = b_mean - self.mean, self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean.copy_(self.mean + delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + 1e-8)
        return torch.clamp(z, -10.0, 10.0)


class PPOAgent(FactoredPolicy, Learner):
    """Batched PPO with the factored action head; see the module docstring."""

    kind = "ppo-native"
    version = 1

    def __init__(self, scenario: Scenario, config: PPOConfig | None = None, *, seed: int | None = None) -> None:
        self._start(scenario, config or PPOConfig(), seed)
        self.features = NeuralFeatures(self.layout)
        torch.manual_seed(int(self.rng.integers(2**31)))  # initial weights follow the seed
        self.norm = RunningNorm(self.features.dim)
        self.policy = FactoredPolicyNet(self.features.dim, self.config.hidden, self.nvec)
        self.value = value_net(self.features.dim, self.config.hidden)
        params = list(self.policy.parameters()) + list(self.value.parameters())
        self.opt = torch.optim.Adam(params, lr=self.config.lr, eps=1e-5)
        self.total_steps = 0  # the budget of the current learn call (for the learning-rate schedule)
        self.anchor: tuple[RunningNorm, FactoredPolicyNet] | None = None  # π_0 of a warm start, frozen

    # ---- warm start --------------------------------------------------------------------------------------------
    def warm_start(self, source: PPOAgent, *, copy_weights: bool = True) -> None:
        """Start from ``source``'s policy, value and input normalisation (``copy_weights``) and keep a frozen copy
        of its policy as the anchor of ``anchor_coef``; the optimiser and the step count start afresh.

        Raises:
            ConfigError: ``source`` is not a PPO policy of the same observation layout, actions and network size.
        """
        if not isinstance(source, PPOAgent):
            raise ConfigError(f"a PPO run can start only from a PPO policy ({self.kind}), got {type(source).__name__}")
        if source.layout != self.layout or source.nvec != self.nvec:
            raise ConfigError(
                f"the starting policy was trained on another market: observation layout "
                f"{source.layout.obs_dim} / actions {source.nvec}, this run has {self.layout.obs_dim} / {self.nvec}"
            )
        if source.config.hidden != self.config.hidden:
            raise ConfigError(
                f"the starting policy has hidden = {source.config.hidden}, this run {self.config.hidden}: "
                "set the same network size (--set hidden=...)"
            )
        if copy_weights:
            self.policy.load_state_dict(source.policy.state_dict())
            self.value.load_state_dict(source.value.state_dict())
            self.norm.load_state_dict(source.norm.state_dict())
        anchor_norm, anchor = copy.deepcopy(source.norm), copy.deepcopy(source.policy)
        for module in (anchor_norm, anchor):
            module.requires_grad_(False)
        self.anchor = (anchor_norm, anchor)

    # ---- policy ------------------------------------------------------------------------------------------------
    def _inputs(self, obs: np.ndarray) -> torch.Tensor:
        return self.norm(torch.from_numpy(self.features(obs)))

    @torch.no_grad()
    def component_probabilities(self, obs: np.ndarray) -> list[np.ndarray]:
        logits = self.policy(self._inputs(check_obs(obs, self.obs_dim)))
        return [torch.softmax(lg, dim=-1).numpy().astype(np.float64) for lg in logits]

    # ---- learning ----------------------------------------------------------------------------------------------
    def learn(self, env: Any, total_steps: int, *, callback: Any = None, seed: int | None = None) -> Self:
        """Train on a Gymnasium vector env (next-step autoreset) until ``total_steps`` user-decisions."""
        with torch_threads(self.config.threads):  # small nets lose a lot on oversubscribed cores
            return self._learn(env, total_steps, callback=callback, seed=seed)

    def _learn(self, env: Any, total_steps: int, *, callback: Any, seed: int | None) -> Self:
        c = self.config
        torch.manual_seed(int(self.rng.integers(2**31)) if seed is None else seed)
        self.total_steps = total_steps
        n, t_len = int(env.num_envs), c.rollout_steps
        tracker = EpisodeTracker(n)
        next_log = self.steps_done + c.log_every
        obs, _ = env.reset(seed=int(self.rng.integers(2**31)))
        pending = np.zeros(n, dtype=bool)  # these slots' next step is a reset (not a transition)
        stats: dict[str, list[float]] = {"loss": [], "entropy": [], "approx_kl": []}
        dim = self.features.dim
        while self.steps_done < total_steps:
            x_buf = np.zeros((t_len, n, dim), dtype=np.float32)
            a_buf = np.zeros((t_len, n, 3), dtype=np.int64)
            logp_buf = np.zeros((t_len, n), dtype=np.float32)
            v_buf = np.zeros((t_len + 1, n), dtype=np.float32)
            r_buf = np.zeros((t_len, n), dtype=np.float32)
            done_buf = np.zeros((t_len, n), dtype=bool)
            valid_buf = np.zeros((t_len, n), dtype=bool)
            for t in range(t_len):
                x = self.features(obs)
                self.norm.update(x[~pending] if (~pending).any() else x)
                with torch.no_grad():
                    z = self.norm(torch.from_numpy(x))
                    dists = [torch.distributions.Categorical(logits=lg) for lg in self.policy(z)]
                    action = torch.stack([d.sample() for d in dists], dim=1)
                    logp = sum(d.log_prob(action[:, i]) for i, d in enumerate(dists))
                    v_buf[t] = self.value(z).squeeze(-1).numpy()
                x_buf[t], a_buf[t], logp_buf[t] = x, action.numpy(), logp.numpy()
                obs, reward, terminated, truncated, _ = env.step(a_buf[t])
                done = np.asarray(terminated | truncated, dtype=bool)
                valid = ~pending
                r_buf[t], done_buf[t], valid_buf[t] = np.where(valid, reward, 0.0), done, valid
                tracker.update(reward, done, valid)
                pending = done.copy()
            with torch.no_grad():
                v_buf[t_len] = self.value(self._inputs(obs)).squeeze(-1).numpy()
            adv = self._gae(r_buf, v_buf, done_buf, valid_buf)
            sel = valid_buf.reshape(-1)
            self.steps_done += int(sel.sum())
            ret = (adv + v_buf[:t_len]).reshape(-1)[sel]
            self._set_lr()
            loss, entropy, kl = self._update(
                x_buf.reshape(-1, dim)[sel], a_buf.reshape(-1, 3)[sel], logp_buf.reshape(-1)[sel],
                adv.reshape(-1)[sel], ret,
            )  # fmt: skip
            stats["loss"].append(loss)
            stats["entropy"].append(entropy)
            stats["approx_kl"].append(kl)
            if self.steps_done >= next_log or self.steps_done >= total_steps:
                next_log = self.steps_done + c.log_every
                logged = {"mean_return": tracker.pop_mean(), "episodes": float(tracker.n_episodes)}
                logged |= {k: float(np.mean(v)) for k, v in stats.items()}
                stats = {k: [] for k in stats}
                if callback is not None and callback(self, self.steps_done, logged) is False:
                    break
        return self

    def _gae(self, r: np.ndarray, v: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """GAE advantages (T, n); a done step has no successor value; masked steps get 0 and cut no chain."""
        c = self.config
        t_len = r.shape[0]
        adv = np.zeros_like(r)
        last = np.zeros(r.shape[1], dtype=np.float32)
        for t in reversed(range(t_len)):
            # the successor of a valid, unfinished step t is step t + 1 (valid, since only a done step is followed
            # by a reset) or, at the rollout's end, the bootstrap value v[T]
            nonterminal = ~done[t]
            delta = r[t] + c.gamma * v[t + 1] * nonterminal - v[t]
            last = np.where(valid[t], delta + c.gamma * c.gae_lambda * nonterminal * last, 0.0).astype(np.float32)
            adv[t] = last
        return adv

    def _set_lr(self) -> None:
        c = self.config
        frac = 1.0 - min(self.steps_done / max(self.total_steps, 1), 1.0) if c.anneal_lr else 1.0
        for g in self.opt.param_groups:
            g["lr"] = c.lr * max(frac, 0.05)

    def _update(
        self, x: np.ndarray, a: np.ndarray, logp_old: np.ndarray, adv: np.ndarray, ret: np.ndarray
    ) -> tuple[float, float, float]:
        c = self.config
        m = x.shape[0]
        z_all = self.norm(torch.from_numpy(x))
        a_all, lp_all = torch.from_numpy(a), torch.from_numpy(logp_old)
        adv_all, ret_all = torch.from_numpy(adv), torch.from_numpy(ret.astype(np.float32))
        params = list(self.policy.parameters()) + list(self.value.parameters())
        losses, entropies, kls = [], [], []
        anchor_logp: list[torch.Tensor] = []  # log π_0 of every row, per head (a warm start's anchor)
        if self.anchor is not None and c.anchor_coef > 0:
            with torch.no_grad():
                anchor_logits = self.anchor[1](self.anchor[0](torch.from_numpy(x)))
                anchor_logp = [torch.log_softmax(lg, dim=-1) for lg in anchor_logits]
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        for _ in range(c.update_epochs):
            for idx in torch.tensor_split(torch.randperm(m, generator=gen), c.n_minibatches):  # near-equal sizes
                z, act = z_all[idx], a_all[idx]
                dists = [torch.distributions.Categorical(logits=lg) for lg in self.policy(z)]
                logp = sum(d.log_prob(act[:, k]) for k, d in enumerate(dists))
                entropy = sum(d.entropy() for d in dists).mean()
                log_ratio = logp - lp_all[idx]
                ratio = log_ratio.exp()
                b_adv = adv_all[idx]
                b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
                pg = torch.max(-b_adv * ratio, -b_adv * torch.clamp(ratio, 1 - c.clip_coef, 1 + c.clip_coef)).mean()
                v_loss = ((self.value(z).squeeze(-1) - ret_all[idx]) ** 2).mean()
                loss = pg + c.value_coef * v_loss - c.entropy_coef * entropy
                if anchor_logp:  # KL(π_0 ‖ π) per head: Σ_a π_0(a) (log π_0(a) − log π(a))
                    for lp0, d in zip(anchor_logp, dists, strict=True):
                        kl0 = (lp0[idx].exp() * (lp0[idx] - torch.log_softmax(d.logits, dim=-1))).sum(-1)
                        loss = loss + c.anchor_coef * kl0.mean()
                self.opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, c.grad_clip)
                self.opt.step()
                with torch.no_grad():
                    kls.append(float(((ratio - 1) - log_ratio).mean()))
                losses.append(float(loss.detach()))
                entropies.append(float(entropy.detach()))
        return float(np.mean(losses)), float(np.mean(entropies)), float(np.mean(kls))

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        optim = save_torch_state(path, {"policy": self.policy, "value": self.value, "norm": self.norm}, self.opt)
        write_learner_manifest(path, self, {"features_dim": self.features.dim, **optim})

    @classmethod
    def load(cls, path: Path | str) -> PPOAgent:
        path = Path(path)
        agent, manifest = read_learner(cls, PPOConfig, path)
        if manifest.get("features_dim") != agent.features.dim:
            raise ArtifactError(f"{path}: network input size {manifest.get('features_dim')} != {agent.features.dim}")
        modules = {"policy": agent.policy, "value": agent.value, "norm": agent.norm}
        load_torch_state(path, modules, agent.opt, manifest)
        return agent


WARM_STARTS = True  # adrl train --init-from: a run may begin from a trained PPO policy


def build(name: str, scenario: Scenario, params: dict[str, Any], *, seed: int | None, **_: Any) -> PPOAgent:
    return PPOAgent(scenario, agent_params(PPOConfig, params, name), seed=seed)


register_kind(PPOAgent.kind, PPOAgent.load)
