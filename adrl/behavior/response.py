"""The learned simulator backend (:class:`LearnedResponse`) and value model (:class:`BehaviorValueModel`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from adrl.behavior.model import BehaviorModel
from adrl.errors import ArtifactError, FeatureMismatch
from adrl.features import FeatureLayout
from adrl.scenario import Scenario, scenario_from_dict
from adrl.world import Response, UserBatch


def _check_compatible(model: BehaviorModel, scenario: Scenario) -> FeatureLayout:
    """The scenario's layout, after checking that ``model`` is a full adrl model built for it."""
    layout = FeatureLayout.from_scenario(scenario)
    if model.data_format != "adrl" or model.encoder is None:
        raise ArtifactError(f"a {model.data_format!r}-format behavior model cannot drive the adrl simulator")
    if not all(model.heads):
        off = [h for h, on in model.enabled_heads.items() if not on]
        raise ArtifactError(f"the simulator needs click, conversion and leave heads; this model has {off} disabled")
    if model.layout_hash != layout.hash:
        raise FeatureMismatch(
            f"behavior model was built for feature layout {model.layout_hash}, the scenario {scenario.name!r} has "
            f"layout {layout.hash}; refit it on logs of this scenario"
        )
    category_of = np.array([scenario.categories.index(c.category) for c in scenario.creatives])
    if not np.array_equal(category_of, model.encoder.category_of):
        raise FeatureMismatch("behavior model maps creatives to other categories than the scenario does")
    return layout


class LearnedResponse:
    """:class:`~adrl.world.ResponseModel` backed by a fitted behavior model (batched numpy, no autograd).

    ``probabilities`` encodes the users' observations with the scenario's feature layout and returns pCTR,
    P(conversion | click) = pCTCVR / pCTR = pCVR and pLeave.
    """

    def __init__(self, model: BehaviorModel, scenario: Scenario) -> None:
        self.layout = _check_compatible(model, scenario)
        self.model, self.scenario = model, scenario
        self._fast = model.fast
        assert model.encoder is not None  # checked above
        self._encoder = model.encoder

    @classmethod
    def load(cls, path: Path | str, scenario: Scenario | None = None) -> LearnedResponse:
        """Load ``path`` for ``scenario`` (default: the scenario stored in the artifact).

        Raises:
            ArtifactError: the artifact is missing, truncated or malformed, or has no stored scenario when none is
                given.
            FeatureMismatch: the model was built for another feature layout than the scenario's.
        """
        if scenario is not None:
            model = BehaviorModel.load(path, layout=FeatureLayout.from_scenario(scenario))
            return cls(model, scenario)
        model = BehaviorModel.load(path)
        if model.data_format != "adrl":
            raise ArtifactError(
                f"{path}: a {model.data_format!r}-format behavior model cannot drive the adrl simulator"
            )
        if not isinstance(model.scenario, dict):
            raise ArtifactError(f"{path}/model.json stores no scenario; pass the scenario the model was fit for")
        return cls(model, scenario_from_dict(model.scenario, source=f"{path}/model.json scenario"))

    def probabilities_from_obs(self, obs: np.ndarray, action: np.ndarray) -> Response:
        """Response for encoded observations (n, obs_dim) and actions (n, 3), when the caller already has ``obs``."""
        obs, action = self._encoder.check(obs, action)
        z = self._fast.logits(obs, action)
        np.clip(z, -30.0, 30.0, out=z)
        p = 1.0 / (1.0 + np.exp(-z))
        return Response(p_click=p[:, 0], p_conversion=p[:, 1], p_leave=p[:, 2])

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        """pCTR, P(conversion | click) and pLeave, each float32 (n,), for ``batch`` shown ``action`` (n, 3)."""
        return self.probabilities_from_obs(self.layout.encode(batch), action)


class BehaviorValueModel:
    """:class:`~adrl.agents.baselines.ValueModel` from a behavior model: immediate expected reward of every action.

    reward(a) = click_value * pCTR + conversion_weight * conversion_value(creative) * pCTCVR - cost(slot)
    - churn_cost * pLeave.
    """

    def __init__(self, model: BehaviorModel, scenario: Scenario, *, chunk: int = 2048) -> None:
        _check_compatible(model, scenario)
        self.model, self.scenario, self.chunk = model, scenario, chunk
        self.rewards = scenario.reward_table

    def expected_reward(self, obs: np.ndarray, delays: np.ndarray | None = None) -> np.ndarray:
        """Shape (n, len(delays), n_slots, n_creatives); ``delays`` are delay indices (all when None)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
        sc = self.scenario
        d_idx = np.arange(sc.n_delays) if delays is None else np.asarray(delays, dtype=np.int64)
        grid = np.stack(np.meshgrid(d_idx, np.arange(sc.n_slots), np.arange(sc.n_creatives), indexing="ij"), axis=-1)
        grid = grid.reshape(-1, 3)
        k = grid.shape[0]
        out = np.empty((obs.shape[0], k))
        step = max(1, self.chunk // max(k, 1) * 16)
        for i in range(0, obs.shape[0], step):
            o = obs[i : i + step]
            rep = np.repeat(o, k, axis=0)
            act = np.tile(grid, (o.shape[0], 1))
            p_click, p_ctcvr, p_leave = self.model.predict(rep, act)
            value = self.rewards.expected(p_click, p_ctcvr, act[:, 1], act[:, 2], p_leave)
            out[i : i + step] = value.reshape(o.shape[0], k)
        return out.reshape(obs.shape[0], len(d_idx), sc.n_slots, sc.n_creatives)


def behavior_q(path: Path | str, scenario: Scenario) -> Callable[[np.ndarray], np.ndarray]:
    """Immediate expected reward of every action (n, n_actions) from an ``adrl fit`` artifact: a reward model for
    the per-decision DM / DR estimators (``adrl ope --behavior DIR``)."""
    value_model = BehaviorValueModel(BehaviorModel.load(Path(path)), scenario)

    def q(obs: np.ndarray) -> np.ndarray:
        v = np.asarray(value_model.expected_reward(obs))
        return v.reshape(v.shape[0], -1)

    return q
