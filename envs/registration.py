"""Registers the environments with Gymnasium; ``import adrl`` runs it.

``gym.make(id, scenario=..., behavior_model=...)`` builds one :class:`~adrl.envs.ad_placement.AdPlacementEnv`;
``gym.make_vec(id, num_envs=N, ...)`` builds the native :class:`~adrl.envs.vector.AdPlacementVectorEnv` (the
``vector_entry_point``), not N Python envs. Entry points are strings, so registering imports nothing heavy.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

GROUND_TRUTH_ID = "adrl/AdPlacement-v0"
LEARNED_ID = "adrl/AdPlacement-Learned-v0"
VIRAL_ID = "adrl/AdPlacement-Viral-v0"


def register_envs() -> None:
    """Register ``adrl/AdPlacement-v0`` (ground truth), ``adrl/AdPlacement-Learned-v0`` (needs behavior_model) and
    ``adrl/AdPlacement-Viral-v0`` (the users of a social graph together; ``num_envs`` is the graph's size)."""
    # The env raises ResetNeeded on a step before reset() itself, and both check_envs run in the tests, so the
    # OrderEnforcing and PassiveEnvChecker layers would only add per-step cost (gym.make(..., disable_env_checker=
    # False) still adds the checker).
    if GROUND_TRUTH_ID not in registry:
        register(
            id=GROUND_TRUTH_ID,
            entry_point="adrl.envs.ad_placement:AdPlacementEnv",
            vector_entry_point="adrl.envs.vector:AdPlacementVectorEnv",
            order_enforce=False,
            disable_env_checker=True,
        )
    if LEARNED_ID not in registry:
        register(
            id=LEARNED_ID,
            entry_point="adrl.envs.ad_placement:make_learned_env",
            vector_entry_point="adrl.envs.vector:make_learned_vector_env",
            order_enforce=False,
            disable_env_checker=True,
        )
    if VIRAL_ID not in registry:
        register(
            id=VIRAL_ID,
            entry_point="adrl.envs.viral:ViralAdPlacementEnv",
            vector_entry_point="adrl.envs.viral:make_viral_vector_env",
            order_enforce=False,
            disable_env_checker=True,
        )


register_envs()
