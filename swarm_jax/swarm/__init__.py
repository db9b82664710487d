"""SwarmThinkers layer: K physical candidates per decision, their features, the decision among them
and its importance weights."""

from swarm_jax.swarm.candidates import candidate_site_z, draw_candidates, execute_candidate, select_candidate
from swarm_jax.swarm.decision import Decision, choose_candidate, decision_of
from swarm_jax.swarm.features import (
    CANDIDATE_FEATURE_DIM, CANDIDATE_LAYOUT, GLOBAL_FEATURE_DIM, GLOBAL_FEATURE_NAMES, candidate_features,
    global_features,
)
from swarm_jax.swarm.weights import (
    accumulate_log_weight, batch_ess_ratio, ess_ratio, ess_ratio_from_logits, normalized_weights, step_log_weight,
    trajectory_log_weight, weighted_mean,
)

__all__ = [name for name in dir() if not name.startswith("_")]
