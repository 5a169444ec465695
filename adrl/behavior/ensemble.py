"""An ensemble of behavior models: the learned simulator's mean probabilities and where its members disagree.

One fitted :class:`~adrl.behavior.BehaviorModel` says what the logs imply, not how sure it is. Off the logged
support (a state and action the logging policy rarely produced) the members of a bootstrap ensemble (each fitted
on a Poisson(1) resample of the training user-days, with its own initial weights) extrapolate differently; their
spread is an estimate of the model's epistemic uncertainty (Lakshminarayanan et al. 2017).

:class:`EnsembleResponse` is a :class:`~adrl.world.ResponseModel`: it returns the members' mean pCTR, pCVR and
pLeave, and keeps the disagreement of the last call,

    disagreement = std_k(r̂_k) + leave_value · std_k(p̂_leave,k)

with r̂_k = pCTR_k · (click_value + conversion_weight · conversion_value · pCVR_k) the immediate expected reward of
member k (reward units) and ``leave_value`` what one lost user is taken to cost in those units. The learned
environment reports it in ``info["disagreement"]``, and its pessimistic mode (``penalty`` λ > 0, MOPO, Yu et al.
2020) trains on ``reward − λ · disagreement`` (see :mod:`adrl.envs.pessimistic`).

Artifact: a directory with ``ensemble.json`` (kind, version, members, ``penalty``, ``leave_value``, how the
penalty was chosen) and one behavior-model artifact per member (``member-0/`` ..., each ``weights.safetensors`` +
``model.json``). :func:`is_ensemble` tells the two kinds of directory apart.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from adrl.behavior.model import BehaviorModel
from adrl.behavior.response import LearnedResponse
from adrl.behavior.support import LoggedSupport
from adrl.behavior.training import (
    AdrlLogSource,
    Encoded,
    FitConfig,
    _make_net,
    _scan,
    _train,
    torch_threads,
)
from adrl.errors import ArtifactError, ConfigError
from adrl.features import FeatureLayout
from adrl.io import read_manifest, write_json_atomic
from adrl.scenario import Scenario, scenario_from_dict
from adrl.world import Response, UserBatch

ENSEMBLE_JSON = "ensemble.json"
KIND = "adrl-behavior-ensemble"
VERSION = 1


def is_ensemble(path: Path | str) -> bool:
    """True if ``path`` holds an ensemble artifact (``ensemble.json``), False for a single behavior model."""
    return (Path(path) / ENSEMBLE_JSON).is_file()


@dataclass(frozen=True)
class EnsembleConfig:
    """How the ensemble is built and how pessimistic the simulator is by default.

    Attributes:
        n_members: bootstrap members fitted (besides ``base``, when one is given to :func:`fit_ensemble`).
        epochs: epochs of each member's fit (its other settings come from the ``FitConfig``).
        penalty: λ of the pessimistic mode (0: the plain mean model); written to the artifact as its default.
        leave_value: reward units one lost user costs in the disagreement (see the module docstring).
        prior_std: initial spread of each member's categorical embeddings (the base fit uses 0.05). Rows the logs
            never train (an unlogged slot or delay, say) keep their member's random start, so the members disagree
            there, as randomized prior functions do (Osband et al. 2018); trained rows move to what the data say.
        support_penalty: κ of the count-based pessimistic mode (:mod:`adrl.behavior.support`; the logs' cell
            counts are always saved, so a later run can set κ); written to the artifact as its default.
    """

    n_members: int = 3
    epochs: int = 3
    penalty: float = 0.0
    leave_value: float = 1.0
    prior_std: float = 2.0
    support_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not (self.prior_std > 0 and np.isfinite(self.prior_std)):
            raise ConfigError(f"prior_std must be a finite number > 0, got {self.prior_std!r}")
        if not isinstance(self.n_members, int) or self.n_members < 1:
            raise ConfigError(f"n_members must be an integer >= 1, got {self.n_members!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (self.penalty >= 0 and np.isfinite(self.penalty)):
            raise ConfigError(f"penalty must be a finite number >= 0, got {self.penalty!r}")
        if not (self.leave_value >= 0 and np.isfinite(self.leave_value)):
            raise ConfigError(f"leave_value must be a finite number >= 0, got {self.leave_value!r}")
        if not (self.support_penalty >= 0 and np.isfinite(self.support_penalty)):
            raise ConfigError(f"support_penalty must be a finite number >= 0, got {self.support_penalty!r}")


class EnsembleResponse:
    """Mean response of several behavior models, with their disagreement (see the module docstring).

    Args:
        members: fitted adrl-format behavior models of ``scenario`` (at least two for a disagreement).
        scenario: the market they were fitted for.
        penalty: λ of the pessimistic mode (read by :mod:`adrl.envs.pessimistic`).
        leave_value: reward units of one lost user in the disagreement.
        provenance: JSON-able notes saved with the artifact (e.g. how ``penalty`` was chosen).
        support: the logged impressions per cell (:class:`~adrl.behavior.support.LoggedSupport`); with it each call
            also sets ``last_support_width`` and ``last_support_count`` (n,).
        support_penalty: κ of the count-based pessimistic mode (reward − κ · support width); needs ``support``.
    """

    def __init__(
        self,
        members: list[BehaviorModel],
        scenario: Scenario,
        *,
        penalty: float = 0.0,
        leave_value: float = 1.0,
        provenance: dict[str, Any] | None = None,
        support: LoggedSupport | None = None,
        support_penalty: float = 0.0,
    ) -> None:
        if len(members) < 1:
            raise ConfigError("an ensemble needs at least one member")
        if not (penalty >= 0 and np.isfinite(penalty)):
            raise ConfigError(f"penalty must be a finite number >= 0, got {penalty!r}")
        if not (leave_value >= 0 and np.isfinite(leave_value)):
            raise ConfigError(f"leave_value must be a finite number >= 0, got {leave_value!r}")
        if not (support_penalty >= 0 and np.isfinite(support_penalty)):
            raise ConfigError(f"support_penalty must be a finite number >= 0, got {support_penalty!r}")
        if support_penalty > 0 and support is None:
            raise ConfigError(
                "support_penalty > 0 needs the logged support (LoggedSupport.from_logs of the fit's logs)"
            )
        self.responses = [LearnedResponse(m, scenario) for m in members]
        self.members = members
        self.scenario = scenario
        self.layout = FeatureLayout.from_scenario(scenario)
        self.model = members[0]  # what greedy and pacing rank actions by (BehaviorValueModel)
        self.penalty = float(penalty)
        self.leave_value = float(leave_value)
        self.provenance = dict(provenance or {})
        self._rewards = scenario.reward_table
        self.last_disagreement: np.ndarray = np.zeros(0)
        self.support = support
        self.support_penalty = float(support_penalty)
        self.last_support_width: np.ndarray = np.zeros(0)
        self.last_support_count: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def n_members(self) -> int:
        return len(self.members)

    def member_probabilities(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(K, 3, n) float64: each member's pCTR, pCVR (given a click) and pLeave for ``obs`` (n, obs_dim)."""
        out = []
        for r in self.responses:
            p = r.probabilities_from_obs(obs, action)
            out.append(np.stack([p.p_click, p.p_conversion, p.p_leave]).astype(np.float64))
        return np.stack(out)

    def disagreement_of(self, probs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(n,) disagreement of member probabilities ``probs`` (K, 3, n) for ``action`` (n, 3)."""
        if probs.shape[0] < 2:
            return np.zeros(probs.shape[2])
        reward = self._rewards.revenue(probs[:, 0], probs[:, 0] * probs[:, 1], np.asarray(action)[:, 2])  # (K, n)
        return reward.std(axis=0) + self.leave_value * probs[:, 2].std(axis=0)

    def probabilities_from_obs(self, obs: np.ndarray, action: np.ndarray) -> Response:
        """Mean response for encoded observations and actions; sets ``last_disagreement`` (n,) (and, with a
        support, ``last_support_width`` and ``last_support_count``)."""
        probs = self.member_probabilities(obs, action)
        self.last_disagreement = self.disagreement_of(probs, action)
        mean = probs.mean(axis=0)
        if self.support is not None:
            self.last_support_width, self.last_support_count = self.support.width(obs, action, mean[0], mean[1])
        return Response(p_click=mean[0], p_conversion=mean[1], p_leave=mean[2])

    def probabilities(self, batch: UserBatch, action: np.ndarray) -> Response:
        """The members' mean pCTR, P(conversion | click) and pLeave, each (n,); sets ``last_disagreement``."""
        return self.probabilities_from_obs(self.layout.encode(batch), action)

    def disagreement(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(n,) disagreement of the members for observations (n, obs_dim) and actions (n, 3)."""
        return self.disagreement_of(self.member_probabilities(obs, action), action)

    # ---- artifact --------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """Write ``member-k/`` for every member, then ``ensemble.json`` (atomically, last)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = []
        for k, m in enumerate(self.members):
            m.save(path / f"member-{k}")
            names.append(f"member-{k}")
        write_json_atomic(
            path / ENSEMBLE_JSON,
            {
                "kind": KIND,
                "version": VERSION,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "members": names,
                "penalty": self.penalty,
                "leave_value": self.leave_value,
                "layout_hash": self.layout.hash,
                "scenario_hash": self.scenario.content_hash,
                "scenario": self.scenario.model_dump(mode="json"),
                "provenance": self.provenance,
                "support": None if self.support is None else self.support.save(path),
                "support_penalty": self.support_penalty,
            },
        )
        return path

    @classmethod
    def load(cls, path: Path | str, scenario: Scenario | None = None) -> EnsembleResponse:
        """Load an ensemble for ``scenario`` (default: the one stored in ``ensemble.json``).

        Raises:
            ArtifactError: the manifest or a member is missing or malformed.
            FeatureMismatch: a member was built for another feature layout than the scenario's.
        """
        path = Path(path)
        manifest = read_manifest(path, kind=KIND, version=VERSION, name=ENSEMBLE_JSON)
        src = path / ENSEMBLE_JSON
        names = manifest.get("members")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and "/" not in n for n in names):
            raise ArtifactError(f"{src}: 'members' must be a non-empty list of member directory names, got {names!r}")
        if scenario is None:
            scenario = scenario_from_dict(manifest.get("scenario"), source=f"{src}: scenario")
        layout = FeatureLayout.from_scenario(scenario)
        members = [BehaviorModel.load(path / n, layout=layout) for n in names]
        try:
            penalty, leave_value = float(manifest["penalty"]), float(manifest["leave_value"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{src}: 'penalty' and 'leave_value' must be numbers ({e!r})") from e
        provenance = manifest.get("provenance") if isinstance(manifest.get("provenance"), dict) else {}
        entry = manifest.get("support")  # absent in ensembles saved before the count-based mode: no support
        support = None if entry is None else LoggedSupport.load(path, entry, scenario)
        kappa = manifest.get("support_penalty", 0.0)
        if not isinstance(kappa, int | float) or isinstance(kappa, bool) or not (kappa >= 0 and np.isfinite(kappa)):
            raise ArtifactError(f"{src}: 'support_penalty' must be a finite number >= 0, got {kappa!r}")
        if kappa > 0 and support is None:
            raise ArtifactError(f"{src}: 'support_penalty' is {kappa} but the ensemble has no 'support'")
        return cls(members, scenario, penalty=penalty, leave_value=leave_value, provenance=provenance,
                   support=support, support_penalty=float(kappa))  # fmt: skip


# ---- fitting ----------------------------------------------------------------------------------------------------
def _training_rows(source: AdrlLogSource, validation_fraction: float) -> tuple[Encoded, np.ndarray]:
    """Every training impression of the log in memory, with the integer id of its user-day (for the bootstrap)."""
    parts, users = [], []
    for df in source.frames():
        enc, u, _ = source.encode(df)
        keep = u >= validation_fraction
        if keep.any():
            parts.append(enc.take(keep))
            users.append(u[keep])
    if not parts:
        raise ConfigError(f"{source.path}: no training impressions to fit an ensemble on")
    _, user_id = np.unique(np.concatenate(users), return_inverse=True)
    return Encoded.concat(parts), user_id


def _bootstrap_batches(data: Encoded, counts: np.ndarray, batch_size: int) -> Any:
    """A ``batches(rng)`` for ``_train``: minibatches of ``data`` with row i repeated ``counts[i]`` times."""
    index = np.repeat(np.arange(len(data)), counts)

    def batches(rng: np.random.Generator) -> Iterator[Encoded]:
        order = index[rng.permutation(index.size)]
        for i in range(0, order.size, batch_size):
            yield data.take(order[i : i + batch_size])

    return batches


def fit_ensemble(
    logs: Path | str,
    scenario: Scenario,
    cfg: FitConfig,
    ensemble: EnsembleConfig | None = None,
    *,
    base: BehaviorModel | None = None,
    provenance: dict[str, Any] | None = None,
) -> EnsembleResponse:
    """Fit ``ensemble.n_members`` bootstrap members on ``logs`` (with the fit code of ``fit_adrl``).

    Each member sees a Poisson(1) resample of the training user-days (the validation users, a fixed hash of the user
    id, stay out and drive early stopping as in ``fit_adrl``) and its own initial weights; every draw comes from
    ``cfg.seed``. ``base`` (e.g. the model ``fit_adrl`` already fitted on all the data) joins as member 0.
    """
    ens = ensemble or EnsembleConfig()
    start = time.perf_counter()
    member_cfg = FitConfig(**{**cfg.__dict__, "epochs": ens.epochs, "baselines": False})
    source = AdrlLogSource(logs, scenario, member_cfg)
    if member_cfg.input_cap_quantile is not None:
        source.cap_inputs(member_cfg.input_cap_quantile)
    scan, val, _, _ = _scan(source, member_cfg)
    assert scan.dense_sum is not None and scan.dense_sq is not None and scan.label_sum is not None
    mean = scan.dense_sum / scan.n_train
    std = np.sqrt(np.maximum(scan.dense_sq / scan.n_train - mean**2, 0.0))
    rates = scan.label_sum / scan.n_train
    rates[1] = rates[1] / max(rates[0], 1e-9)
    data, user_id = _training_rows(source, member_cfg.validation_fraction)
    members: list[BehaviorModel] = [] if base is None else [base]
    streams = np.random.SeedSequence(cfg.seed).spawn(ens.n_members)
    for k, ss in enumerate(streams):
        boot_ss, train_ss, torch_ss = ss.spawn(3)
        weights = np.random.default_rng(boot_ss).poisson(1.0, int(user_id.max()) + 1)[user_id]
        net = _make_net(source.encoder.spec, member_cfg, mean, std, rates, int(torch_ss.generate_state(1)[0]))
        with torch.no_grad():  # each member's own random start where the logs say nothing
            gen = torch.Generator().manual_seed(int(torch_ss.generate_state(2)[1]))
            for emb in net.embeddings.values():
                w = cast(torch.nn.Embedding, emb).weight
                w.copy_(torch.randn(tuple(w.shape), generator=gen) * ens.prior_std)
        batches = _bootstrap_batches(data, weights, member_cfg.batch_size)
        with torch_threads(member_cfg.threads):
            history = _train(net, batches, val, (True, True, True), member_cfg, np.random.default_rng(train_ss),
                             int(weights.sum()), False, None)  # fmt: skip
        members.append(
            BehaviorModel(
                net,
                data_format="adrl",
                heads=(True, True, True),
                layout=source.layout,
                category_of=source.category_of,
                scenario=scenario.model_dump(mode="json"),
                scenario_hash=scenario.content_hash,
                training={"member": k, "bootstrap": "poisson(1) over training user-days", "history": history},
                input_caps=source.encoder.caps,
            )
        )
    notes = {"fit_seconds": round(time.perf_counter() - start, 2), "members_epochs": ens.epochs,
             "base_included": base is not None, **(provenance or {})}  # fmt: skip
    support = LoggedSupport.from_logs(logs, scenario)
    return EnsembleResponse(members, scenario, penalty=ens.penalty, leave_value=ens.leave_value, provenance=notes,
                            support=support, support_penalty=ens.support_penalty)  # fmt: skip
