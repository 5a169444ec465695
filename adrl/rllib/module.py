"""The RLModule of ``adrl train --engine rllib``: adrl's PPO networks inside RLlib's new API stack.

The module holds exactly the networks of :class:`adrl.agents.ppo.PPOAgent`: the observation -> input transform of
:class:`~adrl.agents.base.NeuralFeatures` (continuous features scaled to [-1, 1], categoricals one-hot, here in
torch), a :class:`~adrl.agents.ppo.RunningNorm` whose statistics are fixed for the run (see
:mod:`adrl.rllib.train`), the factored (delay, slot, creative) policy trunk and heads, and the value MLP. The three
heads' logits are concatenated into RLlib's MultiCategorical over the MultiDiscrete action space, which is the
same product of categoricals. Exporting is then a copy of ``policy``, ``value`` and ``norm`` state dicts into a
``PPOAgent``: the artifact is a plain ``ppo-native`` one that ``adrl.load_policy`` already loads.

Importing this module imports Ray: only :mod:`adrl.rllib.train` does, after :func:`adrl.rllib.require_ray`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchMultiCategorical
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.typing import ModuleID

from adrl.agents.base import NeuralFeatures
from adrl.agents.ppo import RunningNorm
from adrl.agents.reinforce import FactoredPolicyNet, value_net
from adrl.features import FeatureLayout
from adrl.scenario import scenario_from_dict


class TorchFeatures(torch.nn.Module):
    """:class:`~adrl.agents.base.NeuralFeatures` in torch (batched, on the env runners and the learner)."""

    cont: torch.Tensor
    center: torch.Tensor
    scale: torch.Tensor
    cat_index: torch.Tensor
    cat_offset: torch.Tensor
    cat_card: torch.Tensor

    def __init__(self, features: NeuralFeatures) -> None:
        super().__init__()
        self.dim = int(features.dim)
        self.n_cont = len(features.cont)
        cats = features.cats
        offsets = np.cumsum([0] + [k for _, k in cats])[:-1] + self.n_cont
        # constants, not state: rebuilt from the scenario, so they never travel with the weights
        self.register_buffer("cont", torch.as_tensor(features.cont, dtype=torch.long), persistent=False)
        self.register_buffer("center", torch.as_tensor(features.center), persistent=False)
        self.register_buffer("scale", torch.as_tensor(features.scale), persistent=False)
        self.register_buffer("cat_index", torch.as_tensor([i for i, _ in cats], dtype=torch.long), persistent=False)
        self.register_buffer("cat_offset", torch.as_tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer("cat_card", torch.as_tensor([k for _, k in cats], dtype=torch.long), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32)
        out = torch.zeros((x.shape[0], self.dim), dtype=torch.float32, device=x.device)
        out[:, : self.n_cont] = (x[:, self.cont] - self.center) * self.scale
        if self.cat_index.numel():
            idx = torch.clamp(x[:, self.cat_index].to(torch.long), min=torch.zeros_like(self.cat_card),
                              max=self.cat_card - 1) + self.cat_offset  # fmt: skip
            out.scatter_(1, idx, 1.0)
        return out


class AdrlPPOModule(TorchRLModule, ValueFunctionAPI):
    """PPO's policy and value networks of adrl (see the module docstring).

    ``model_config``: ``scenario`` (the market, as a JSON mapping), ``hidden``, ``norm_mean`` and ``norm_var``
    (the fixed input statistics, lists of the feature size).
    """

    def setup(self) -> None:
        cfg = self.model_config
        scenario = scenario_from_dict(cfg["scenario"], source="rllib model_config scenario")
        features = NeuralFeatures(FeatureLayout.from_scenario(scenario))
        hidden = int(cfg["hidden"])
        self.nvec = tuple(int(k) for k in scenario.action_nvec)
        self.features = TorchFeatures(features)
        self.norm = RunningNorm(features.dim)
        with torch.no_grad():
            self.norm.mean.copy_(torch.as_tensor(cfg["norm_mean"], dtype=torch.float64))
            self.norm.var.copy_(torch.as_tensor(cfg["norm_var"], dtype=torch.float64))
            self.norm.count.fill_(float(cfg.get("norm_count", 1.0)))
        self.policy = FactoredPolicyNet(features.dim, hidden, self.nvec)  # type: ignore[arg-type]
        self.value = value_net(features.dim, hidden)
        self.action_dist_cls = TorchMultiCategorical.get_partial_dist_cls(
            space=self.action_space, input_lens=list(self.nvec)
        )

    def _inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.norm(self.features(batch[Columns.OBS]))

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        z = self._inputs(batch)
        return {Columns.ACTION_DIST_INPUTS: torch.cat(self.policy(z), dim=-1)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        z = self._inputs(batch)
        return {Columns.ACTION_DIST_INPUTS: torch.cat(self.policy(z), dim=-1), Columns.EMBEDDINGS: z}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        z = self._inputs(batch) if embeddings is None else embeddings
        out: torch.Tensor = self.value(z).squeeze(-1)
        return out


class AdrlPPOLearner(PPOTorchLearner):
    """RLlib's PPO learner with adrl's PPO's two optimisation details.

    Adam with eps 1e-5 (torch's default is 1e-8), and advantages normalised per minibatch over its unmasked rows
    (RLlib normalises once over the whole batch; normalising each minibatch again gives adrl's per-minibatch
    normalisation, as the two differ by an affine map)."""

    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        module = self._module[module_id]
        params = self.get_parameters(module)
        optimizer = torch.optim.Adam(params, eps=1e-5)
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> Any:
        adv = batch[Postprocessing.ADVANTAGES]
        mask = batch.get(Columns.LOSS_MASK)
        valid = adv[mask] if mask is not None else adv
        if valid.numel() > 1:
            batch = dict(batch)
            batch[Postprocessing.ADVANTAGES] = (adv - valid.mean()) / (valid.std() + 1e-8)
        return super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
