"""The training loop of one curriculum stage: config -> env + PPO -> chunks -> logs/checkpoints.

:func:`run_stage` is the library-level entry point behind ``train.py``. Given a validated
:class:`~swarm_jax.training.config.TrainConfig` it builds the :class:`TiO2GrowthEnv`, the PPO
trainer (:func:`make_trainer`) and either a fresh :class:`~swarm_jax.agents.ppo.RunnerState`
(optionally starting from transferred network parameters) or the one restored from the latest
checkpoint (``resume=True``), then runs the host loop::

    while update < num_updates:
        runner_state, metrics = trainer.train_chunk(runner_state, n)   # jitted, n <= log_every
        check finite -> log (TensorBoard, CSV, progress bar) -> ESS monitor -> checkpoint?

**Deterministic chunks.** Chunk boundaries sit at the multiples of ``training.log_every``
updates (counted from update 0; the last chunk may be shorter; the schedule is generated lazily),
checkpoints are written only at chunk boundaries (the first one at or after each multiple of
``training.checkpoint_freq`` env steps, and at least ``training.checkpoint_every_s`` seconds after
the previous one) and the whole random state lives in the runner state, so a run that is
interrupted and resumed ends with bitwise the same parameters and the same metric rows as an
uninterrupted one.

**Checkpoints** are saved asynchronously (:class:`CheckpointStore` with ``async_save``): the
next chunk runs while orbax writes; every later save, a stop, the final checkpoint and the end of
the stage wait for it. Each one is verified by its SHA-256 manifest; ``resume=True`` continues
from the newest checkpoint that verifies (reporting and setting aside newer corrupt ones), and a
checkpoint that cannot be written raises :class:`CheckpointWriteError` (one line naming the last
verified checkpoint and the resume command).

**Outputs** under ``out`` for stage ``N`` (:class:`StagePaths`)::

    tensorboard/stageN/        TensorBoard scalars (SB3 tags: rollout/*, train/*, custom/*, time/fps)
    checkpoints/stageN/<step>/ periodic checkpoints (whole RunnerState + config + meta), step =
                               env steps; the newest ``training.keep_checkpoints`` are kept
    stageN_final/              the final checkpoint (also written after an ESS early stop)
    config_stageN.yaml         the effective configuration (re-runnable with --config)
    metrics_stageN.csv         one row per log (per chunk)
    learning_curve_stageN.png  learning curves, written at the end

**Stops.** SIGINT/SIGTERM (:class:`~swarm_jax.training.safety.GracefulInterrupt`): the current
chunk finishes, a checkpoint is saved, status ``interrupted``, exit code ``128 + signal``
(130 for SIGINT). NaN/inf in the metrics or the network/optimiser state after a chunk: nothing
is saved (the last verified checkpoint stays, and only a verified one is named), status
``numerical_fault``, exit code 3. ESS ratio
below ``training.ess_threshold`` for ``training.ess_patience`` consecutive logs
(:class:`~swarm_jax.training.logging.ESSMonitor`): checkpoint + final, status
``stopped_early``, exit code 0.

Units: every step count is in environment steps summed over the parallel environments; times in
seconds; ``sps``/``fps`` = environment steps per second of training (compilation excluded).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from swarm_jax.agents.networks import NetworkConfig
from swarm_jax.agents.ppo import PPOConfig, PPOTrainer, RunnerState, make_train
from swarm_jax.env.reward import RewardConfig
from swarm_jax.env.tio2_env import TiO2GrowthEnv
from swarm_jax.training.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    complete_steps,
    default_device,
    is_complete_checkpoint,
    newest_verified_step,
    read_config,
    save_final,
    verify_checkpoint,
)
from swarm_jax.training.config import EnvironmentConfig, TrainConfig, config_to_dict
from swarm_jax.training.logging import ESSMonitor, TensorBoardLogger, plot_learning_curves
from swarm_jax.training.safety import GracefulInterrupt, check_finite

__all__ = [
    "EXIT_NUMERICAL_FAULT",
    "STATUSES",
    "ChunkReport",
    "StagePaths",
    "TrainError",
    "TrainResult",
    "chunk_sizes",
    "complete_steps",
    "count_chunks",
    "estimate_network_params",
    "iter_chunk_sizes",
    "initial_runner_state",
    "make_env",
    "make_trainer",
    "resume_differences",
    "run_stage",
    "write_config_yaml",
]

COMPLETED = "completed"
STOPPED_EARLY = "stopped_early"
INTERRUPTED = "interrupted"
NUMERICAL_FAULT = "numerical_fault"
ALREADY_COMPLETE = "already_complete"
STATUSES = (COMPLETED, STOPPED_EARLY, INTERRUPTED, NUMERICAL_FAULT, ALREADY_COMPLETE)

EXIT_NUMERICAL_FAULT = 3

#: Config entries a resumed run may change (they steer the run, not what it computes).
RUN_CONTROL_KEYS = (
    "name",
    "training.total_timesteps",
    "training.checkpoint_freq",
    "training.checkpoint_every_s",
    "training.keep_checkpoints",
    "training.log_every",
    "training.ess_threshold",
    "training.ess_patience",
    "training.cpu_overrides",
)

# Metric keys of PPOTrainer.train_chunk that are not already mapped by logging.METRIC_TAGS.
_EXTRA_TAGS = {
    "n_episodes": "rollout/n_episodes",
    "reward": "rollout/reward_mean",
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
}
_COUNTER_KEYS = ("env_steps", "update_step")  # float32 copies; exact values are in the state
# NaN by design when no episode finished within the chunk.
_EPISODE_KEYS = ("ep_rew_mean", "ep_len_mean")
_CSV_FIRST = ("env_steps", "update", "time_s", "fps")
_CSV_ORDER = (
    "ep_rew_mean", "ep_len_mean", "n_episodes", "reward", "policy_loss", "value_loss", "entropy",
    "approx_kl", "clip_fraction", "loss", "learning_rate", "ess_ratio", "ess_penalty", "batch_ess",
    "batch_ess_running", "roughness", "coverage", "o_ti_ratio", "mean_height", "ess_lambda",
    "ess_constraint", "ess_loss", "reward_scale", "learn_reward",
)


def log_line(message: str) -> None:
    """Default ``log`` of the loop: a line on stdout, flushed (progress stays visible in pipes)."""
    print(message, flush=True)


class TrainError(ValueError):
    """A run cannot start as asked (nothing to resume, results would be overwritten, a checkpoint
    that does not fit the config, ...). The message is one line meant for the user."""


# --------------------------------------------------------------------------------------------
# Building blocks from a TrainConfig


def make_env(cfg: TrainConfig) -> TiO2GrowthEnv:
    """The gymnax environment of ``cfg.environment`` with ``cfg.reward`` as default params."""
    return _env(cfg.environment, cfg.reward)


def _env(e: EnvironmentConfig, reward: RewardConfig) -> TiO2GrowthEnv:
    return TiO2GrowthEnv(e.lattice_size, n_swarm=e.n_swarm, physics=e.physics_params(),
                         max_steps_in_episode=e.max_steps, reward=reward,
                         episode_ml=e.episode_ml, episode_time=e.episode_time)


@functools.lru_cache(maxsize=4)
def _cached_trainer(environment: EnvironmentConfig, reward: RewardConfig, ppo: PPOConfig,
                    network: NetworkConfig, n_devices: int | None):
    mesh = None
    if n_devices is not None and n_devices * jax.process_count() > 1:
        from swarm_jax.distributed import make_data_mesh

        mesh = make_data_mesh(n_devices, n_envs=ppo.n_envs)
    return make_train(ppo, network, _env(environment, reward), mesh=mesh)


def resolve_devices(n_devices: int | None, cfg: TrainConfig) -> int | None:
    """Devices per process to shard the env batch over: ``n_devices`` (``None`` = every local
    device, reduced to the largest count that divides ``n_envs`` and the minibatch size)."""
    if n_devices is not None:
        return int(n_devices)
    local = jax.local_device_count()
    n = max(d for d in range(1, local + 1)
            if cfg.ppo.n_envs % (d * jax.process_count()) == 0
            and cfg.ppo.batch_size % (d * jax.process_count()) == 0)
    return n if n * jax.process_count() > 1 else None


def make_trainer(cfg: TrainConfig, n_devices: int | None = None) -> PPOTrainer:
    """The :class:`PPOTrainer` of ``cfg``.

    Trainers are cached on the parts of the config that define the computation (environment,
    reward, ppo with its n_envs and total_timesteps, network), so runs of the same setup in one process
    (a resumed run, tests, notebooks) reuse the compiled chunk functions.
    """
    return _cached_trainer(cfg.environment, cfg.reward, cfg.ppo, cfg.network,
                           resolve_devices(n_devices, cfg))


def estimate_network_params(cfg: TrainConfig) -> int:
    """Parameters of the actor-critic of ``cfg.network``: the leaves of its init tree from
    :func:`jax.eval_shape` (:func:`~swarm_jax.agents.params.network_template`; nothing is
    allocated, and the count is a Python int, so absurd widths cannot overflow)."""
    from swarm_jax.agents.networks import make_network
    from swarm_jax.agents.params import network_template

    env = make_env(cfg)
    template = network_template(make_network(cfg.network, env.num_actions), env.obs_shapes)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(template))


def estimate_training_bytes(cfg: TrainConfig, parts: dict | None = None) -> int:
    """Bytes a training run of ``cfg`` needs beyond the JAX runtime (an estimate, rounded up).

    * lattices: the ``n_envs`` lattice states four times (runner state, the step's output,
      gymnax's auto-reset select, a checkpoint's host copy);
    * rollout: the rollout buffer twice (observations of ``n_steps × n_envs`` transitions,
      float32 ``K × D + G`` each, and their minibatch shuffle);
    * network: float32 parameters five times (parameters, gradients, Adam's two moments, a
      checkpoint's host copy) plus the activations of one minibatch (forward and backward, per
      candidate for the ``swarm`` network).

    Args:
        parts: if given, filled with the three terms (``lattices``, ``rollout``, ``network``).
    """
    from swarm_jax.physics import estimate_state_bytes
    from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM

    e, t = cfg.environment, cfg.ppo
    states = 4 * t.n_envs * estimate_state_bytes(e.lattice_size)
    obs = 4 * (e.n_swarm * CANDIDATE_FEATURE_DIM + GLOBAL_FEATURE_DIM)
    rollout = 2 * cfg.ppo.n_steps * t.n_envs * (obs + 64)
    rows = cfg.ppo.batch_size * (e.n_swarm if cfg.network.kind == "swarm" else 1)
    activations = 3 * 4 * rows * sum(cfg.network.hidden_sizes) * 2  # actor + critic
    network = 5 * 4 * estimate_network_params(cfg) + activations
    if parts is not None:
        parts.update(lattices=int(states), rollout=int(rollout), network=int(network))
    return int(states + rollout + network)


def check_training_memory(cfg: TrainConfig, available: int | None = None) -> int:
    """The estimate of :func:`estimate_training_bytes`; raises :class:`TrainError` (before any
    allocation) when it exceeds the memory available (device memory on an accelerator, else
    MemAvailable). The message names the network when it alone cannot fit, else the lattices
    and rollout."""
    from swarm_jax.training.safety import available_memory_bytes

    parts: dict = {}
    need = estimate_training_bytes(cfg, parts)
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        if parts["network"] > available:  # the network alone cannot fit
            n = estimate_network_params(cfg)
            raise TrainError(
                f"network.hidden_sizes = {list(cfg.network.hidden_sizes)} gives a {cfg.network.kind} "
                f"network of {n:.3g} parameters; with its gradients, Adam's two moments and the "
                f"activations of a ppo.batch_size = {cfg.ppo.batch_size} minibatch training needs "
                f"about {need / 1e9:.3g} GB, more than the {available / 1e9:.3g} GB available; "
                "reduce network.hidden_sizes")
        lx, ly, lz = cfg.environment.lattice_size
        raise TrainError(
            f"training.n_envs = {cfg.ppo.n_envs} lattices of {lx}x{ly}x{lz} with ppo.n_steps = "
            f"{cfg.ppo.n_steps} need about {need / 1e9:.3g} GB (network and optimiser included), "
            f"more than the {available / 1e9:.3g} GB available; reduce training.n_envs or "
            "ppo.n_steps")
    return need


def iter_chunk_sizes(start_update: int, num_updates: int, log_every: int) -> Iterator[int]:
    """Updates per chunk from ``start_update`` to ``num_updates``, lazily (memory O(1) whatever
    the budget): chunks end at the multiples of ``log_every`` (counted from update 0) and at
    ``num_updates``, whatever the start."""
    u = int(start_update)
    while u < num_updates:
        n = min(log_every - u % log_every, num_updates - u)
        yield n
        u += n


def count_chunks(start_update: int, num_updates: int, log_every: int) -> int:
    """``len(list(iter_chunk_sizes(...)))``, computed arithmetically."""
    start, end = int(start_update), int(num_updates)
    if start >= end:
        return 0
    # chunk ends: every multiple of log_every in (start, end), plus end itself
    return (end - 1) // log_every - start // log_every + 1


def chunk_sizes(start_update: int, num_updates: int, log_every: int) -> list[int]:
    """The list of :func:`iter_chunk_sizes` (for small budgets and tests; the training loop
    iterates lazily)."""
    return list(iter_chunk_sizes(start_update, num_updates, log_every))


def initial_runner_state(trainer: PPOTrainer, cfg: TrainConfig, init_params: Any = None
                         ) -> RunnerState:
    """The runner state a fresh run starts from: ``trainer.init(PRNGKey(seed))``, with the
    network parameters replaced by ``init_params`` if given and then a *fresh* optimiser state
    for them (Adam moments zero, step counts zero)."""
    runner_state = trainer.init(jax.random.PRNGKey(cfg.training.seed))
    if init_params is not None:
        runner_state = runner_state.replace(train_state=runner_state.train_state.replace(
            params=init_params, opt_state=trainer.tx.init(init_params)))
    return _canonical(runner_state)


def _canonical(runner_state: RunnerState) -> RunnerState:
    """The state committed to the run's device without weak types: fresh and restored states
    must look alike to jit, or a resumed run would compile its chunk function a second time."""
    return jax.device_put(_drop_weak_types(runner_state), default_device())


def _drop_weak_types(tree: Any) -> Any:
    """``tree`` with weakly typed leaves made strong: a state restored from a checkpoint has no
    weak types, so this keeps fresh and restored states on one compiled chunk function."""
    return jax.tree.map(lambda x: x.astype(x.dtype) if getattr(x, "weak_type", False) else x, tree)


# --------------------------------------------------------------------------------------------
# Paths, config files, CSV


@dataclasses.dataclass(frozen=True)
class StagePaths:
    """Where stage ``stage`` of a run rooted at ``root`` writes (see the module docstring)."""

    root: Path
    stage: int

    @property
    def label(self) -> str:
        return f"stage{self.stage}"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard" / self.label

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints" / self.label

    @property
    def final(self) -> Path:
        return self.root / f"{self.label}_final"

    @property
    def config_yaml(self) -> Path:
        return self.root / f"config_{self.label}.yaml"

    @property
    def metrics_csv(self) -> Path:
        return self.root / f"metrics_{self.label}.csv"

    @property
    def learning_curve(self) -> Path:
        return self.root / f"learning_curve_{self.label}.png"


class _ConfigDumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (``lattice_size: [8, 8, 5]``)."""


_ConfigDumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def write_config_yaml(cfg: TrainConfig, path: Path, header: str = "") -> Path:
    """Write ``cfg`` as YAML (loadable with ``load_config`` / ``train.py --config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text, encoding="utf-8")
    return path


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k not in ("physics", "cpu_overrides"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = dict(v) if isinstance(v, Mapping) else v
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def resume_differences(cfg: TrainConfig, saved: Mapping) -> list[str]:
    """Entries (``"key: checkpoint value -> config value"``) where ``cfg`` differs from a
    checkpoint's saved config in something a resumed run may not change (anything but
    :data:`RUN_CONTROL_KEYS`; ``total_timesteps`` neither when the LR is annealed). A key the
    checkpoint lacks (added to the config format after it was written) counts as its default."""
    now, then = _flatten(config_to_dict(cfg)), _flatten(saved)
    defaults = _flatten(config_to_dict(TrainConfig()))
    allowed = set(RUN_CONTROL_KEYS)
    if cfg.ppo.anneal_lr:
        allowed.discard("training.total_timesteps")  # the LR schedule depends on it
    diffs = []
    for key in sorted(set(now) | set(then)):
        if key in allowed or key == "stage":
            continue
        if key not in then and key in defaults:
            then[key] = defaults[key]
        a, b = then.get(key, "<missing>"), now.get(key, "<missing>")
        if _norm(a) != _norm(b):
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


class _MetricsCSV:
    """``metrics_stageN.csv``: one row per log; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        self.columns: list[str] | None = None
        kept: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(float(row["env_steps"])) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="", encoding="utf-8") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        if self.columns is None:
            rest = [k for k in row if k not in _CSV_FIRST]
            ordered = [k for k in _CSV_ORDER if k in rest]
            self.columns = list(_CSV_FIRST) + ordered + sorted(set(rest) - set(ordered))
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.columns).writeheader()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore", restval="")
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    return str(v)


# --------------------------------------------------------------------------------------------
# Results and per-chunk reports


@dataclasses.dataclass
class ChunkReport:
    """What a callback of :func:`run_stage` receives after every chunk (before any checkpoint)."""

    stage: int
    update: int
    num_updates: int
    env_steps: int
    metrics: dict[str, float]
    runner_state: RunnerState


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`run_stage`.

    Attributes:
        stage, status (one of :data:`STATUSES`), message (a line for the user).
        env_steps, updates, num_updates: where the run stands / was heading.
        paths: the :class:`StagePaths`; ``final_dir``: the final checkpoint if one was written;
        last_checkpoint: the newest complete periodic checkpoint (None if none).
        metrics: the metrics of the last good log (Python floats).
        timings: seconds — ``wall`` (this session), ``compile`` (JIT tracing + compilation),
            ``train`` (chunks minus compilation), ``checkpoint``, and ``sps`` = env steps of
            this session / ``train``.
        signal_number: the signal that interrupted the run, if any.
    """

    stage: int
    status: str
    message: str
    env_steps: int
    updates: int
    num_updates: int
    paths: StagePaths
    final_dir: Path | None = None
    last_checkpoint: Path | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    signal_number: int | None = None

    @property
    def exit_code(self) -> int:
        if self.status == INTERRUPTED:
            return 128 + int(self.signal_number or signal.SIGINT)
        if self.status == NUMERICAL_FAULT:
            return EXIT_NUMERICAL_FAULT
        return 0

    @property
    def finished(self) -> bool:
        """True when the stage has a final checkpoint (completed or stopped early)."""
        return self.status in (COMPLETED, STOPPED_EARLY, ALREADY_COMPLETE)


class _CompileClock:
    """Seconds JAX spends tracing, lowering and compiling while active (jax.monitoring events)."""

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.total = 0.0

    def _listener(self, event: str, duration: float, **_: Any) -> None:
        if event in self._EVENTS:
            self.total += float(duration)

    def __enter__(self) -> _CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


def _fmt(x: float, spec: str = ".3g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def _progress_bar(progress: bool, total: int, initial: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    # No tqdm rate/ETA: they would count compilation; the postfix carries the measured SPS and
    # an ETA from it (remaining env steps / env steps per second of training).
    return tqdm(total=total, initial=initial, desc=desc, unit="step", unit_scale=True,
                dynamic_ncols=True, file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} env steps "
                           "[{elapsed}{postfix}]")


def _first_fault(runner_state: RunnerState, metrics: Mapping[str, float]) -> str | None:
    """Where the first NaN/inf is: the metrics (episode means may be NaN when no episode
    finished), the network parameters or the optimiser state."""
    no_episodes = not metrics.get("n_episodes", 0) > 0
    checked = {k: v for k, v in metrics.items() if not (no_episodes and k in _EPISODE_KEYS)}
    # Checked on the host: the trees are small, and device-side checks would compile per tree.
    host = jax.device_get((runner_state.train_state.params, runner_state.train_state.opt_state))
    return (check_finite(checked, "metrics") or check_finite(host[0], "params")
            or check_finite(host[1], "opt_state"))


def _tb_scalars(metrics: Mapping[str, float], fps: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        if k in _COUNTER_KEYS:
            continue
        out[_EXTRA_TAGS.get(k, k)] = None if not math.isfinite(v) else v
    out["fps"] = fps
    return out


# --------------------------------------------------------------------------------------------
# The stage loop


def run_stage(
    cfg: TrainConfig,
    out: str | Path,
    stage: int,
    *,
    init_params: Any = None,
    init_from: str | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[ChunkReport], None]] = (),
    trainer: PPOTrainer | None = None,
    n_devices: int | None = None,
    resume_hint: str | None = None,
    log: Callable[[str], None] = log_line,
) -> TrainResult:
    """Train one stage (see the module docstring) and return a :class:`TrainResult`.

    Args:
        cfg: the effective configuration (CPU overrides already applied if wanted).
        out: the run's output folder; this stage writes the paths of :class:`StagePaths`.
        stage: curriculum stage number used in the output names.
        init_params: network parameters to start from (same tree as the trainer's params, e.g.
            from :func:`swarm_jax.training.curriculum.load_transfer_params`); the optimiser
            state is fresh. Ignored when resuming.
        init_from: where ``init_params`` came from (recorded in the checkpoint metadata).
        resume: continue from the latest complete checkpoint of this stage (required to exist).
        progress: show a tqdm bar (env steps) instead of one printed line per log.
        callbacks: called after every good chunk with a :class:`ChunkReport`.
        trainer: a prebuilt trainer (default :func:`make_trainer`).
        n_devices: local devices to shard the environments over (default: all that divide
            ``n_envs``; see :func:`resolve_devices`). Ignored with ``trainer``.
        resume_hint: the command that resumes this run (for the interruption message).
        log: where progress lines and messages go.

    Raises:
        TrainError: ``resume`` without a (verified) checkpoint, a fresh start over existing
            results, or a checkpoint that does not fit ``cfg``.
        CheckpointWriteError: a checkpoint could not be written (disk full, file-size limit);
            the earlier checkpoints are intact.
    """
    with _CompileClock() as clock:
        return _run_stage(cfg, out, stage, clock, init_params=init_params, init_from=init_from,
                          resume=resume, progress=progress, callbacks=callbacks,
                          trainer=trainer, n_devices=n_devices, resume_hint=resume_hint, log=log)


def _run_stage(cfg, out, stage, clock, *, init_params, init_from, resume, progress, callbacks,
               trainer, n_devices, resume_hint, log) -> TrainResult:
    t_start = time.perf_counter()
    paths = StagePaths(Path(out), int(stage))
    trainer = trainer if trainer is not None else make_trainer(cfg, n_devices)
    key = jax.random.PRNGKey(cfg.training.seed)
    template = jax.eval_shape(trainer.init, key)
    backend = jax.default_backend()
    device = default_device()
    resume_hint = resume_hint or f"python train.py --stage {stage} --resume --out {paths.root}"

    existing = complete_steps(paths.checkpoints)
    if not resume and (existing or is_complete_checkpoint(paths.final)):
        raise TrainError(f"{paths.root} already holds {paths.label} results "
                         f"({paths.checkpoints if existing else paths.final}); pass --resume to "
                         "continue that run, or choose another --out")
    if resume and not existing:
        raise TrainError(f"nothing to resume: no complete checkpoint in {paths.checkpoints}")

    store = CheckpointStore(paths.checkpoints, max_to_keep=cfg.training.keep_checkpoints,
                            async_save=True)
    try:
        return _train_with_store(cfg, paths, stage, clock, store, trainer, template, device,
                                 backend, t_start, init_params=init_params, init_from=init_from,
                                 resume=resume, progress=progress, callbacks=callbacks,
                                 resume_hint=resume_hint, log=log)
    except CheckpointWriteError as err:
        last = _last_verified(store, None)
        where = (f"the last verified checkpoint is {last}" if last is not None
                 else "no verified checkpoint was written")
        raise CheckpointWriteError(f"{paths.label}: {err}; {where}; free disk space (or raise the "
                                   f"file-size limit) and resume with: {resume_hint}") from None
    finally:
        try:
            store.close()
        except CheckpointError:
            pass  # a failed pending save was reported above


def _last_verified(store: CheckpointStore, candidate: Path | None) -> Path | None:
    """The newest checkpoint of ``store`` known to be verified: ``candidate`` if it verifies,
    else the newest verified step (after waiting for a pending save; never raises)."""
    try:
        store.wait()
    except CheckpointError:
        pass
    if candidate is not None and verify_checkpoint(candidate) is None:
        return candidate
    step = newest_verified_step(store.directory)  # from the newest down; older ones not hashed
    return store.step_path(step) if step is not None else None


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def _restore_or_init(cfg, paths, store, trainer, template, device, init_params, init_from,
                     resume, log):
    """The stage's starting point: the newest verified checkpoint (``resume``) or a fresh state.

    Returns ``(runner_state, restored_step, wall_before, init_from, ess_below_count)``.
    """
    if not resume:
        return initial_runner_state(trainer, cfg, init_params), None, 0.0, init_from, 0
    restored_step = store.latest_verified_step(report=lambda m: log(f"[{paths.label}] {m}"))
    if restored_step is None:
        raise TrainError(f"cannot resume: no verified checkpoint in {paths.checkpoints} "
                         "(each one is reported above)")
    saved_cfg = read_config(store.step_path(restored_step))[0]
    diffs = resume_differences(cfg, saved_cfg)
    if diffs:
        raise TrainError(f"cannot resume {store.step_path(restored_step)} with a different "
                         f"setup ({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''})")
    try:
        runner_state, _, meta = store.restore(restored_step, target=template, device=device)
    except CheckpointError as err:
        raise TrainError(f"cannot resume: {err}") from None
    log(f"[{paths.label}] resuming from {store.step_path(restored_step)} "
        f"(update {int(runner_state.update_step)}, {int(runner_state.env_steps)} env steps)")
    return (runner_state, restored_step, float(meta.get("wall_time_s", 0.0)),
            meta.get("init_from"), int(meta.get("ess_below_count", 0)))


class _StageOutputs:
    """The four output channels of a stage: TensorBoard, ``metrics_stageN.csv``, the progress bar
    (or one log line per chunk) and the user's callbacks."""

    def __init__(self, paths, restored_step, start_steps, progress, num_updates, rollout,
                 callbacks, log):
        self.paths, self.log, self.callbacks = paths, log, callbacks
        self.num_updates, self.rollout = num_updates, rollout
        self.csv = _MetricsCSV(paths.metrics_csv, restored_step)
        purge = None
        if restored_step is not None:
            purge = restored_step + 1  # drop events logged after the checkpoint by the lost session
        elif paths.tensorboard.is_dir() and any(paths.tensorboard.glob("*tfevents*")):
            purge = 0  # an earlier attempt that never checkpointed: start the curves afresh
        self.tb = TensorBoardLogger(paths.tensorboard, purge_step=purge)
        self.bar = _progress_bar(progress, num_updates * rollout, start_steps, paths.label)

    def say(self, message: str) -> None:
        """A message that does not tear the progress bar."""
        if self.bar is not None:
            self.bar.clear()
        self.log(message)
        if self.bar is not None:
            self.bar.refresh()

    def chunk(self, runner_state, metrics, prev_steps, fps, eta, compile_s, time_s) -> None:
        """Report one good chunk on every channel."""
        update, env_steps = int(runner_state.update_step), int(runner_state.env_steps)
        self.tb.log_scalars(env_steps, _tb_scalars(metrics, fps))
        self.csv.append({"env_steps": env_steps, "update": update, "time_s": time_s, "fps": fps,
                         **{k: v for k, v in metrics.items() if k not in _COUNTER_KEYS}})
        postfix = dict(sps=_fmt(fps, ".0f"), ep_rew=_fmt(metrics.get("ep_rew_mean")),
                       ess=_fmt(metrics.get("ess_ratio")), lam=_fmt(metrics.get("ess_lambda")),
                       rough=_fmt(metrics.get("roughness")), eta=_fmt_duration(eta))
        if self.bar is not None:
            self.bar.update(env_steps - prev_steps)
            self.bar.set_postfix(postfix, refresh=True)
        else:
            self.log(f"[{self.paths.label}] update {update}/{self.num_updates} | env steps "
                     f"{env_steps} | " + " | ".join(f"{k} {v}" for k, v in postfix.items())
                     + (f" | compile {compile_s:.1f}s" if compile_s > 0.5 else ""))
        for cb in self.callbacks:
            cb(ChunkReport(self.paths.stage, update, self.num_updates, env_steps, metrics,
                           runner_state))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.tb.close()


class _StageCheckpoints:
    """Periodic, stop and final checkpoints of a stage, their schedule and their cost.

    A periodic save is due when a multiple of ``checkpoint_freq`` env steps passed since the
    last save and at least ``checkpoint_every_s`` seconds of wall time did (saves are
    asynchronous; ``wait`` blocks until one is committed and verified).
    """

    def __init__(self, cfg, paths, store, monitor, t_start, wall_before, backend, init_from,
                 last_ckpt, env_steps):
        self.cfg, self.paths, self.store, self.monitor = cfg, paths, store, monitor
        self.cfg_dict = config_to_dict(cfg)
        self.t_start, self.wall_before = t_start, wall_before
        self.backend, self.init_from = backend, init_from
        self.last = last_ckpt
        self.seconds = 0.0
        self._last_steps, self._last_time = env_steps, time.perf_counter()

    def meta(self, runner_state, status: str) -> dict:
        return {
            "stage": self.paths.stage, "status": status,
            "env_steps": int(runner_state.env_steps), "update": int(runner_state.update_step),
            "num_updates": self.cfg.num_updates, "ess_below_count": self.monitor.below_count,
            "wall_time_s": self.wall_before + time.perf_counter() - self.t_start,
            "jax_backend": self.backend, "jax_version": jax.__version__,
            "init_from": self.init_from,
        }

    def due(self, env_steps: int) -> bool:
        freq = self.cfg.training.checkpoint_freq
        return (env_steps // freq > self._last_steps // freq
                and time.perf_counter() - self._last_time >= self.cfg.training.checkpoint_every_s)

    def save(self, runner_state, status: str, wait: bool = False) -> Path:
        t0 = time.perf_counter()
        env_steps = int(runner_state.env_steps)
        try:
            path = self.store.save(env_steps, runner_state, self.cfg_dict,
                                   self.meta(runner_state, status), force=True)
            if wait:
                self.store.wait()
        finally:
            self.seconds += time.perf_counter() - t0
        self._last_steps, self._last_time = env_steps, time.perf_counter()
        self.last = path
        return path

    def last_verified(self) -> Path | None:
        """The newest checkpoint known to be verified (never an unverified one)."""
        self.last = _last_verified(self.store, self.last)
        return self.last

    def finish(self, runner_state, status: str) -> Path | None:
        """Wait for the pending save; write ``stageN_final`` when the stage completed or stopped
        early. Returns the final folder (or None)."""
        t0 = time.perf_counter()
        self.store.wait()  # the last periodic save is committed and verified (or its error raised)
        final_dir = None
        if status in (COMPLETED, STOPPED_EARLY):
            final_dir = save_final(self.paths.final, runner_state, self.cfg_dict,
                                   self.meta(runner_state, status))
        self.seconds += time.perf_counter() - t0
        return final_dir


def _chunk_loop(trainer, runner_state, sizes, clock, outputs, ckpts, monitor, timings, t_start,
                wall_before, resume_hint):
    """Train chunk by chunk until done, a fault, an ESS stop or a signal.

    Returns ``(runner_state, status, message, last_metrics, signal_number)``.
    """
    label, num_steps = outputs.paths.label, outputs.num_updates * outputs.rollout
    start_steps = int(runner_state.env_steps)
    status, message, last_metrics, signal_number = COMPLETED, "", {}, None
    first_chunk = True
    with GracefulInterrupt() as interrupt:
        for n in sizes:
            t0, c0 = time.perf_counter(), clock.total
            new_state, metrics = trainer.train_chunk(runner_state, n)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            compile_s = clock.total - c0
            train_s = max(time.perf_counter() - t0 - compile_s, 1e-9)
            timings["train"] += train_s
            if first_chunk:
                first_chunk = False
                outputs.say(f"[{label}] compiled in {compile_s:.1f} s (first chunk "
                            f"{time.perf_counter() - t0:.1f} s)")
            fault = _first_fault(new_state, metrics)
            if fault is not None:
                last = ckpts.last_verified()
                where = (f"the last good (verified) checkpoint is {last}" if last
                         else "no verified checkpoint was written before it")
                message = (f"{label}: {fault} after update {int(runner_state.update_step) + n} "
                           f"(env steps {int(runner_state.env_steps) + n * outputs.rollout}); "
                           f"stopped, {where}")
                return runner_state, NUMERICAL_FAULT, message, last_metrics, None
            prev_steps = int(runner_state.env_steps)
            runner_state, last_metrics = new_state, metrics
            env_steps = int(runner_state.env_steps)
            session_sps = (env_steps - start_steps) / timings["train"]
            eta = (num_steps - env_steps) / session_sps if session_sps > 0 else math.inf
            outputs.chunk(runner_state, metrics, prev_steps, (env_steps - prev_steps) / train_s,
                          eta, compile_s, wall_before + time.perf_counter() - t_start)

            due = ckpts.due(env_steps)
            if monitor.update(metrics["ess_ratio"]):
                ckpts.save(runner_state, STOPPED_EARLY, wait=True)
                return runner_state, STOPPED_EARLY, f"{label}: {monitor.reason}", metrics, None
            if interrupt.requested:
                signal_number = int(signal.Signals[interrupt.signal_name])
                path = ckpts.save(runner_state, INTERRUPTED, wait=True)
                message = (f"{label}: {interrupt.signal_name} received; saved {path} at update "
                           f"{int(runner_state.update_step)}/{outputs.num_updates}; resume with: "
                           f"{resume_hint}")
                return runner_state, INTERRUPTED, message, metrics, signal_number
            if due:
                ckpts.save(runner_state, "running")
    return runner_state, status, message, last_metrics, signal_number


def _train_with_store(cfg, paths, stage, clock, store, trainer, template, device, backend,
                      t_start, *, init_params, init_from, resume, progress, callbacks,
                      resume_hint, log) -> TrainResult:
    """Restore or start, train chunk by chunk, checkpoint, finish: the body of :func:`run_stage`."""
    runner_state, restored_step, wall_before, init_from, below = _restore_or_init(
        cfg, paths, store, trainer, template, device, init_params, init_from, resume, log)
    runner_state = _canonical(runner_state)
    monitor = ESSMonitor(cfg.training.ess_threshold, cfg.training.ess_patience)
    monitor.below_count = below
    write_config_yaml(cfg, paths.config_yaml,
                      header=f"Effective configuration of {paths.label} (jax backend: {backend}).\n"
                             "Re-run with: python train.py --config <this file>")
    num_updates, rollout = cfg.num_updates, cfg.rollout_size
    update, start_steps = int(runner_state.update_step), int(runner_state.env_steps)
    if not resume:
        log(f"[{paths.label}] {cfg.name}: lattice {'x'.join(map(str, cfg.environment.lattice_size))}"
            f", {cfg.ppo.n_envs} envs x {cfg.ppo.n_steps} steps = {rollout} per update, "
            f"{num_updates} updates ({num_updates * rollout} env steps), backend {backend}"
            + (f", from {init_from}" if init_from else ""))
    ckpts = _StageCheckpoints(cfg, paths, store, monitor, t_start, wall_before, backend, init_from,
                              store.step_path(restored_step) if restored_step is not None else None,
                              start_steps)
    timings = {"train": 0.0, "checkpoint": 0.0}
    log(f"[{paths.label}] compiling the update (first start; cached afterwards)...")
    outputs = _StageOutputs(paths, restored_step, start_steps, progress, num_updates, rollout,
                            callbacks, log)
    try:
        runner_state, status, message, last_metrics, signal_number = _chunk_loop(
            trainer, runner_state, iter_chunk_sizes(update, num_updates, cfg.training.log_every),
            clock, outputs, ckpts, monitor, timings, t_start, wall_before, resume_hint)
    finally:
        outputs.close()
    final_dir = ckpts.finish(runner_state, status)
    update, env_steps = int(runner_state.update_step), int(runner_state.env_steps)
    if status == COMPLETED:
        message = (f"{paths.label}: completed {update} updates, {env_steps} env steps; "
                   f"final checkpoint {final_dir}")
    elif status == STOPPED_EARLY:
        message += f"; final checkpoint {final_dir}"
    _plot(paths, log)
    timings.update(checkpoint=ckpts.seconds, wall=time.perf_counter() - t_start,
                   compile=clock.total,
                   sps=(env_steps - start_steps) / timings["train"] if timings["train"] else 0.0)
    return TrainResult(stage=paths.stage, status=status, message=message, env_steps=env_steps,
                       updates=update, num_updates=num_updates, paths=paths,
                       final_dir=final_dir, last_checkpoint=ckpts.last, metrics=last_metrics,
                       timings=timings, signal_number=signal_number)


def _plot(paths: StagePaths, log: Callable[[str], None]) -> None:
    """Learning curves of the stage, if anything was logged (a plotting problem is reported,
    not raised: the checkpoints matter more)."""
    if not paths.metrics_csv.is_file():
        return
    try:
        plot_learning_curves(paths.metrics_csv, paths.learning_curve,
                             title=f"{paths.label} ({paths.root})")
    except (ValueError, OSError) as err:
        log(f"[{paths.label}] warning: no learning-curve plot: {err}")
