"""The curriculum: stages 1 -> 2 -> 3 on growing lattices, with parameter transfer.

Each stage trains with its *own* configuration (lattice, rollout, PPO hyper-parameters) and
starts from the previous stage's final network parameters with a *fresh* optimiser state
(Adam moments zero, step count 0) and fresh environments. ``--pretrained CKPT`` does the same
by hand from any checkpoint: a ``stageN_final`` directory, a periodic step directory
``checkpoints/stageN/<step>``, or a store directory (its latest complete step).

Transfer needs identical networks. The swarm network scores each candidate from local features
of fixed size, so its parameters do not depend on the lattice size and move between stages as
they are; a different ``network`` section (kind, hidden sizes, activation) — or, for the
``flat_mlp`` network, a different number of candidates — is refused with a message naming the
difference, before anything is compiled.

:func:`plan_stages` checks a whole sequence up front (existing results, checkpoints to resume
and their configs, network compatibility, the pretrained checkpoint); :func:`run_curriculum`
then runs it with :func:`swarm_jax.training.trainer.run_stage`. With ``resume=True`` finished
stages (a complete ``stageN_final``) are skipped, a started one continues from its latest
checkpoint, and the following ones start from the previous stage's final parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from swarm_jax.agents.networks import make_network
from swarm_jax.agents.params import check_tree_matches, network_template
from swarm_jax.training.checkpoint import (
    CheckpointError,
    is_complete_checkpoint,
    load_params_only,
    newest_verified_step,
    read_config,
)
from swarm_jax.training.config import TrainConfig, config_to_dict
from swarm_jax.training.trainer import (
    ALREADY_COMPLETE,
    COMPLETED,
    STOPPED_EARLY,
    ChunkReport,
    StagePaths,
    TrainError,
    TrainResult,
    check_training_memory,
    complete_steps,
    log_line,
    make_env,
    resume_differences,
    run_stage,
)

__all__ = [
    "CurriculumError",
    "StagePlan",
    "check_transferable",
    "load_transfer_params",
    "param_template",
    "plan_stages",
    "run_curriculum",
]

#: Where the network parameters sit in a checkpointed RunnerState.
PARAMS_SUBTREE = "train_state.params"


class CurriculumError(TrainError):
    """Parameters cannot be handed over (different network, unreadable checkpoint)."""


def param_template(cfg: TrainConfig) -> Any:
    """The network parameter tree of ``cfg`` as ``jax.ShapeDtypeStruct`` leaves (nothing is
    computed or compiled)."""
    env = make_env(cfg)
    return network_template(make_network(cfg.network, env.num_actions), env.obs_shapes)


def _describe_network(net: dict, n_swarm: Any) -> str:
    text = f"kind {net.get('kind')!r}, hidden_sizes {list(net.get('hidden_sizes', []))}, " \
           f"activation {net.get('activation')!r}"
    return text + (f", n_swarm {n_swarm}" if net.get("kind") == "flat_mlp" else "")


def check_transferable(src: TrainConfig | dict, dst: TrainConfig, src_name: str,
                       dst_name: str) -> None:
    """Raise :class:`CurriculumError` unless ``src``'s network parameters fit ``dst``.

    The network sections must be equal; for ``flat_mlp`` also ``environment.n_swarm`` (its
    policy head has one output per candidate).
    """
    s = config_to_dict(src) if isinstance(src, TrainConfig) else src
    d = config_to_dict(dst)
    s_net, d_net = s.get("network", {}), d["network"]
    s_k = s.get("environment", {}).get("n_swarm")
    d_k = d["environment"]["n_swarm"]
    same = (s_net.get("kind") == d_net["kind"]
            and list(s_net.get("hidden_sizes", [])) == list(d_net["hidden_sizes"])
            and s_net.get("activation") == d_net["activation"]
            and (d_net["kind"] != "flat_mlp" or s_k == d_k))
    if not same:
        raise CurriculumError(
            f"cannot transfer parameters from {src_name} to {dst_name}: the networks differ "
            f"({src_name}: {_describe_network(s_net, s_k)}; {dst_name}: "
            f"{_describe_network(d_net, d_k)}); the network section must be identical")


def load_transfer_params(path: str | Path, cfg: TrainConfig) -> Any:
    """The network parameters of checkpoint ``path`` as a tree matching ``cfg``'s network.

    Args:
        path: a final or step checkpoint directory, or a checkpoint store directory.
        cfg: the configuration of the stage that starts from these parameters.

    Returns:
        The parameter tree (jax arrays, float32) with the structure of a freshly initialised
        network of ``cfg``.

    Raises:
        CurriculumError: missing/unreadable checkpoint, different network config, or a leaf
            whose path, shape or dtype differs (named in the message).
    """
    path = Path(path)
    name = f"checkpoint {path}"
    if not path.exists():
        raise CurriculumError(f"{name}: no such file or directory")
    try:
        saved_cfg, _ = read_config(path)
        raw = load_params_only(path, PARAMS_SUBTREE)
    except CheckpointError as err:
        raise CurriculumError(f"cannot use {name}: {err}") from None
    if isinstance(saved_cfg, dict) and "network" in saved_cfg:
        check_transferable(saved_cfg, cfg, name, "this config")
    template = param_template(cfg)
    check_tree_matches(raw, template, name, error=CurriculumError,
                       hint="(the network section must be identical)")
    return jax.tree.map(lambda spec, leaf: jnp.asarray(leaf, spec.dtype), template, raw)


@dataclasses.dataclass
class StagePlan:
    """One stage of a planned run.

    Attributes:
        stage: the stage number (output names ``stageN``).
        cfg: its effective configuration.
        action: ``"run"`` (fresh start), ``"resume"`` (latest checkpoint) or ``"skip"`` (final
            checkpoint already there).
        init_from: checkpoint whose parameters a fresh start uses (None: random init).
        init_params: those parameters, when already loaded (the pretrained checkpoint is loaded
            while planning; a previous stage's final only once that stage has finished).
    """

    stage: int
    cfg: TrainConfig
    action: str
    init_from: Path | None = None
    init_params: Any = None


def plan_stages(
    stages: Sequence[tuple[int, TrainConfig]],
    out: str | Path,
    *,
    resume: bool = False,
    pretrained: str | Path | None = None,
) -> list[StagePlan]:
    """Check a run of ``stages`` (in order, each from the previous one's final parameters)
    before anything is compiled, and decide what each stage does.

    Raises:
        TrainError / CurriculumError: a fresh start over existing results; ``resume`` with
            nothing to resume; a resumed stage whose checkpoint config differs in more than
            run-control keys; networks that cannot hand over; an unusable ``pretrained``.
    """
    if not stages:
        raise TrainError("no stage to run")
    if resume and pretrained is not None:
        raise TrainError("--pretrained and --resume exclude each other: a resumed stage "
                         "continues from its own checkpoint")
    out = Path(out)
    plans: list[StagePlan] = []
    for i, (stage, cfg) in enumerate(stages):
        check_training_memory(cfg)
        paths = StagePaths(out, int(stage))
        steps = complete_steps(paths.checkpoints)
        has_final = is_complete_checkpoint(paths.final)
        if i > 0:
            check_transferable(stages[i - 1][1], cfg, f"stage {stages[i - 1][0]}",
                               f"stage {stage}")
        init_from = (Path(pretrained) if pretrained is not None else None) if i == 0 \
            else StagePaths(out, int(stages[i - 1][0])).final
        if not resume:
            if steps or has_final:
                raise TrainError(
                    f"{out} already holds {paths.label} results "
                    f"({paths.checkpoints if steps else paths.final}); pass --resume to continue "
                    "that run, or choose another --out")
            plans.append(StagePlan(stage, cfg, "run", init_from))
        elif has_final:
            plans.append(StagePlan(stage, cfg, "skip"))
        elif steps:
            # The checkpoint --resume will use: the newest that verifies (run_stage reports the
            # corrupt newer ones, and refuses with one line when none verifies).
            newest = newest_verified_step(paths.checkpoints)
            if newest is not None:
                latest = paths.checkpoints / str(newest)
                saved, _ = read_config(latest)
                diffs = resume_differences(cfg, saved)
                if diffs:
                    raise TrainError(
                        f"cannot resume {latest} with a different setup: "
                        f"{'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''} (a resumed "
                        "run may only change total_timesteps, checkpoint_freq, "
                        "checkpoint_every_s, keep_checkpoints, log_every and the ESS stop)")
            plans.append(StagePlan(stage, cfg, "resume"))
        else:
            plans.append(StagePlan(stage, cfg, "run", init_from))
    if resume and all(p.action == "run" for p in plans):
        raise TrainError(f"nothing to resume in {out}: no complete checkpoint of "
                         f"{', '.join(StagePaths(out, p.stage).label for p in plans)}; run "
                         "without --resume to start")
    first = plans[0]
    if first.action == "run" and first.init_from is not None:
        first.init_params = load_transfer_params(first.init_from, first.cfg)
    return plans


def run_curriculum(
    plans: Sequence[StagePlan],
    out: str | Path,
    *,
    progress: bool = True,
    resume_hint: str | None = None,
    callbacks: Sequence[Callable[[ChunkReport], None]] = (),
    log: Callable[[str], None] = log_line,
    n_devices: int | None = None,
) -> list[TrainResult]:
    """Run planned stages in order; stop after the first that does not complete.

    A stage that stopped early (ESS) ends the sequence too: its final checkpoint exists, so
    resuming the run continues with the next stage.
    """
    out = Path(out)
    results: list[TrainResult] = []
    for i, plan in enumerate(plans):
        paths = StagePaths(out, plan.stage)
        if plan.action == "skip":
            msg = f"{paths.label}: already complete ({paths.final}), skipped"
            log(msg)
            results.append(TrainResult(plan.stage, ALREADY_COMPLETE, msg, 0, 0,
                                       plan.cfg.num_updates, paths, final_dir=paths.final))
            continue
        init_params = plan.init_params
        if plan.action == "run" and init_params is None and plan.init_from is not None:
            init_params = load_transfer_params(plan.init_from, plan.cfg)
        result = run_stage(
            plan.cfg, out, plan.stage,
            init_params=init_params if plan.action == "run" else None,
            init_from=str(plan.init_from) if plan.action == "run" and plan.init_from else None,
            resume=plan.action == "resume", progress=progress, callbacks=callbacks,
            resume_hint=resume_hint, log=log, n_devices=n_devices,
        )
        results.append(result)
        if result.status == COMPLETED and i + 1 < len(plans):
            log(result.message)
        if result.status != COMPLETED:
            if result.status == STOPPED_EARLY and i + 1 < len(plans):
                result.message += (f"; stage {plans[i + 1].stage} not started (resume the run "
                                   "to go on with it anyway)")
            break
    return results
