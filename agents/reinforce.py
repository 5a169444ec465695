"""REINFORCE with a learned baseline over the factored action, on a vector env.

Policy π(a|x) = π(delay|x) · π(slot|x) · π(creative|x): three categorical heads on a shared MLP trunk. Each update
plays one complete user-day per sub-env of the vector env (from a fresh reset) and descends

    L = − mean_t[ log π(a_t|x_t) · Â_t ] − β · mean_t[ H(π(·|x_t)) ] + mean_t[ (V(x_t) − G_t)² ]

with returns-to-go G_t (undiscounted: a day is short and ends), Â_t = G_t − V(x_t) normalised per batch, and V a
separate MLP (the learned baseline). Torch is seeded once per ``learn`` call from the agent's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from adrl.agents.base import MAX_HIDDEN, EpisodeTracker, FactoredPolicy, Learner, NeuralFeatures, check_obs
from adrl.agents.registry import agent_params, read_learner, register_kind, write_learner_manifest
from adrl.agents.torch_io import load_torch_state, save_torch_state
from adrl.behavior.training import torch_threads
from adrl.errors import ArtifactError
from adrl.scenario import Scenario


@dataclass(frozen=True)
class ReinforceConfig:
    hidden: int = 128
    lr: float = 3e-3
    value_lr: float = 3e-3
    entropy_coef: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 200_000
    threads: int = 1  # torch threads while learning: small nets gain little from more, lose a lot on busy cores

    def __post_init__(self) -> None:
        for name in ("hidden", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden > MAX_HIDDEN:  # checked before the network is allocated
            raise ValueError(f"hidden must be at most {MAX_HIDDEN}, got {self.hidden}")
        for name in ("lr", "value_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.entropy_coef < 0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")


class FactoredPolicyNet(nn.Module):
    """Shared trunk with one logits head per action component."""

    def __init__(self, in_dim: int, hidden: int, nvec: tuple[int, int, int]) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(hidden, k) for k in nvec])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def value_net(in_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )


class ReinforceAgent(FactoredPolicy, Learner):
    """REINFORCE with a learned value baseline; see the module docstring."""

    kind = "reinforce"
    version = 1

    def __init__(self, scenario: Scenario, config: ReinforceConfig | None = None, *, seed: int | None = None) -> None:
        self._start(scenario, config or ReinforceConfig(), seed)
        self.features = NeuralFeatures(self.layout)
        torch.manual_seed(int(self.rng.integers(2**31)))  # initial weights follow the seed
        self.policy = FactoredPolicyNet(self.features.dim, self.config.hidden, self.nvec)
        self.value = value_net(self.features.dim, self.config.hidden)
        self.opt = torch.optim.Adam(
            [
                {"params": self.policy.parameters(), "lr": self.config.lr},
                {"params": self.value.parameters(), "lr": self.config.value_lr},
            ]
        )

    # ---- policy ------------------------------------------------------------------------------------------------
    def _logits(self, obs: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(self.features(check_obs(obs, self.obs_dim)))
        return self.policy(x)

    @torch.no_grad()
    def component_probabilities(self, obs: np.ndarray) -> list[np.ndarray]:
        return [torch.softmax(lg, dim=-1).numpy().astype(np.float64) for lg in self._logits(obs)]

    # ---- learning ----------------------------------------------------------------------------------------------
    def learn(self, env: Any, total_steps: int, *, callback: Any = None, seed: int | None = None) -> Self:
        """Train on a Gymnasium vector env until ``total_steps`` user-decisions (counting earlier ones on resume)."""
        with torch_threads(self.config.threads):  # small nets lose a lot on oversubscribed cores
            return self._learn(env, total_steps, callback=callback, seed=seed)

    def _learn(self, env: Any, total_steps: int, *, callback: Any, seed: int | None) -> Self:
        c = self.config
        torch.manual_seed(int(self.rng.integers(2**31)) if seed is None else seed)
        n = int(env.num_envs)  # each update starts from reset(), so the env's autoreset mode never matters
        tracker = EpisodeTracker(n)
        next_log = self.steps_done + c.log_every
        losses: list[float] = []
        entropies: list[float] = []
        while self.steps_done < total_steps:
            obs, _ = env.reset(seed=int(self.rng.integers(2**31)))
            xs, acts, rews, masks = [], [], [], []
            alive = np.ones(n, dtype=bool)
            while alive.any():
                x = self.features(obs)
                with torch.no_grad():
                    logits = self.policy(torch.from_numpy(x))
                    action = torch.stack(
                        [torch.distributions.Categorical(logits=lg).sample() for lg in logits], dim=1
                    ).numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                done = terminated | truncated
                xs.append(x)
                acts.append(action)
                rews.append(np.where(alive, reward, 0.0))
                masks.append(alive.copy())
                tracker.update(reward, done, alive)
                alive &= ~done
            mask = np.stack(masks)  # (T, n)
            ret = np.cumsum(np.stack(rews)[::-1], axis=0)[::-1]  # returns-to-go, (T, n)
            sel = mask.reshape(-1)
            x_t = torch.from_numpy(np.concatenate(xs)[sel])
            a_t = torch.from_numpy(np.concatenate(acts)[sel])
            g_t = torch.from_numpy(ret.reshape(-1)[sel].astype(np.float32))
            loss, entropy = self._update(x_t, a_t, g_t)
            losses.append(loss)
            entropies.append(entropy)
            self.steps_done += int(sel.sum())
            if self.steps_done >= next_log or self.steps_done >= total_steps:
                next_log = self.steps_done + c.log_every
                stats = {
                    "mean_return": tracker.pop_mean(),
                    "episodes": float(tracker.n_episodes),
                    "loss": float(np.mean(losses)),
                    "entropy": float(np.mean(entropies)),
                }
                losses, entropies = [], []
                if callback is not None and callback(self, self.steps_done, stats) is False:
                    break
        return self

    def _update(self, x: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
        c = self.config
        logits = self.policy(x)
        dists = [torch.distributions.Categorical(logits=lg) for lg in logits]
        logp = sum(d.log_prob(a[:, i]) for i, d in enumerate(dists))
        entropy = sum(d.entropy() for d in dists)
        v = self.value(x).squeeze(-1)
        adv = (g - v).detach()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss = -(logp * adv).mean() - c.entropy_coef * entropy.mean()
        value_loss = torch.mean((v - g) ** 2)
        self.opt.zero_grad()
        (policy_loss + value_loss).backward()
        nn.utils.clip_grad_norm_(list(self.policy.parameters()) + list(self.value.parameters()), c.grad_clip)
        self.opt.step()
        return float(policy_loss.detach()), float(entropy.mean().detach())

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        optim = save_torch_state(path, {"policy": self.policy, "value": self.value}, self.opt)
        write_learner_manifest(path, self, {"features_dim": self.features.dim, **optim})

    @classmethod
    def load(cls, path: Path | str) -> ReinforceAgent:
        path = Path(path)
        agent, manifest = read_learner(cls, ReinforceConfig, path)
        if manifest.get("features_dim") != agent.features.dim:
            raise ArtifactError(f"{path}: network input size {manifest.get('features_dim')} != {agent.features.dim}")
        load_torch_state(path, {"policy": agent.policy, "value": agent.value}, agent.opt, manifest)
        return agent


def build(name: str, scenario: Scenario, params: dict[str, Any], *, seed: int | None, **_: Any) -> ReinforceAgent:
    return ReinforceAgent(scenario, agent_params(ReinforceConfig, params, name), seed=seed)


register_kind(ReinforceAgent.kind, ReinforceAgent.load)
