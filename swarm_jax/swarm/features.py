"""Fixed-size features of the K candidates and of the film, independent of the lattice size.

Every feature is float32 and clipped to a documented range of order one, so one policy network
serves 8×8×5 as well as 50×50×20. Candidate features are gathers around the K candidate sites
(``O(K)``); the global features are ``O(C)`` reductions over the column heights only.

The site a candidate describes
------------------------------
=============  =====================================================================
event kind     site ``(c, z)`` (``c`` the event's column, ``h`` its height)
=============  =====================================================================
deposit Ti/O   the landing site ``(c, h + 1)`` (vacant before the event)
hop            the moving top atom ``(c, h)``; the direction is in the hop one-hot
desorb         the leaving top atom ``(c, h)``
react          the reacting Ti ``(c, z)``, ``z = slot − 7``
=============  =====================================================================

Candidate feature vector (``CANDIDATE_FEATURE_DIM = 116``)
-----------------------------------------------------------
Offsets ``(dx, dy, dz)`` are relative to the site; x, y periodic. Sites below the box read as
substrate, sites above it as vacant.

==========  ===================================================================================
index       feature
==========  ===================================================================================
0 .. 94     19 sites × 5 channels, index ``5 s + ch``. Channels: one-hot species
            (0 vacant, 1 Ti, 2 O, 3 substrate) and 4 = oxide flag. Sites ``s``:
            0 the site itself; NN shell 1..6: (+1,0,0) (−1,0,0) (0,+1,0) (0,−1,0) (0,0,+1)
            (0,0,−1); second-NN shell 7..18: in-plane diagonals (+1,+1,0) (+1,−1,0) (−1,+1,0)
            (−1,−1,0), then (+1,0,+1) (−1,0,+1) (0,+1,+1) (0,−1,+1), then (+1,0,−1) (−1,0,−1)
            (0,+1,−1) (0,−1,−1).
95 .. 102   relative heights ``clip(h(c') − h(c), −4, 4) / 4`` of the 8 surrounding columns, in
            the order (+1,0) (−1,0) (0,+1) (0,−1) (+1,+1) (+1,−1) (−1,+1) (−1,−1).
103 .. 107  event kind one-hot: deposit Ti, deposit O, hop, desorb, react.
108 .. 111  hop direction one-hot +x, −x, +y, −y (all zero for other kinds).
112         ``clip(log10(Γ_e / Γ_tot), −30, 0) / 10``: how likely one physical draw is this event.
113         ``clip(log10(Γ_e / 1 Hz), −40, 20) / 10``: the event's absolute rate.
114         ``z / Lz``.
115         ``clip(z − mean h, −8, 8) / 4``: the site's height above the film's mean height (ML).
==========  ===================================================================================

Global feature vector (``GLOBAL_FEATURE_DIM = 15``)
---------------------------------------------------
==  ==============================================================================
0   mean height / 10 (mean height in ML), clipped to [0, 10]
1   fill fraction: mean height / (Lz − 1)
2   max height / (Lz − 1) (the ceiling is at 1)
3   min height / (Lz − 1)
4   roughness W / 2 (W in layers), clipped to [0, 10]
5   coverage: fraction of columns with h > 0
6   Ti fraction of the film atoms, N_Ti / (N_Ti + N_O) (0 for an empty film)
7   O/Ti ratio / 2 (1 at stoichiometry; 0 without Ti), clipped to [0, 5]
8   oxide fraction of the film atoms
9   ``clip(log10(Γ_tot / C / 1 Hz), −40, 20) / 10``: total rate per column
10  ``clip(log10(R_dep / Γ_tot), −30, 0) / 10``: share of depositions in all events
11  temperature / 1000 K, clipped to [0, 5]
12  ``clip(log10(F / 1 ML/s), −9, 9) / 3``: deposition flux
13  O/Ti flux ratio / 2, clipped to [0, 5]
14  episode progress: step count / max steps, clipped to [0, 1]
==  ==============================================================================
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from swarm_jax.physics.engine import K_HOP0, Event
from swarm_jax.physics.film_observables import height_stats, mean_height_from_atoms, o_ti_ratio, oxide_fraction
from swarm_jax.physics.lattice import HOP, N_EVENT_KINDS, LatticeState
from swarm_jax.physics.params import O, SUBSTRATE, TI, VACANT, PhysicsParams, RateTables
from swarm_jax.swarm.candidates import candidate_site_z

# (dx, dy, dz) of the described site and its NN and second-NN shells (simple cubic).
SITE_OFFSETS = np.array(
    [
        (0, 0, 0),
        (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
        (1, 1, 0), (1, -1, 0), (-1, 1, 0), (-1, -1, 0),
        (1, 0, 1), (-1, 0, 1), (0, 1, 1), (0, -1, 1),
        (1, 0, -1), (-1, 0, -1), (0, 1, -1), (0, -1, -1),
    ],
    np.int32,
)
N_SITES = SITE_OFFSETS.shape[0]  # 19
SITE_CHANNELS = 5  # one-hot vacant, Ti, O, substrate; oxide flag
# (dx, dy) of the 8 surrounding columns.
COLUMN_OFFSETS = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)], np.int32)
N_COLUMNS = COLUMN_OFFSETS.shape[0]
N_DIRECTIONS = 4
HEIGHT_CLIP = 4

# Feature layout: name -> slice of the candidate vector.
CANDIDATE_LAYOUT = {}
_start = 0
for _name, _size in (
    ("sites", N_SITES * SITE_CHANNELS),
    ("relative_heights", N_COLUMNS),
    ("kind", N_EVENT_KINDS),
    ("hop_direction", N_DIRECTIONS),
    ("log_rel_rate", 1),
    ("log_rate", 1),
    ("z_over_lz", 1),
    ("z_above_mean", 1),
):
    CANDIDATE_LAYOUT[_name] = slice(_start, _start + _size)
    _start += _size
CANDIDATE_FEATURE_DIM = _start  # 116

GLOBAL_FEATURE_NAMES = (
    "mean_height", "fill_fraction", "max_fill", "min_fill", "roughness", "coverage",
    "ti_fraction", "o_ti_ratio", "oxide_fraction", "log_total_rate_per_column",
    "log_deposition_share", "temperature", "log_deposition_rate", "o_ti_flux_ratio", "progress",
)
GLOBAL_FEATURE_DIM = len(GLOBAL_FEATURE_NAMES)  # 15


def _bounds():
    lo = np.zeros(CANDIDATE_FEATURE_DIM, np.float32)
    hi = np.ones(CANDIDATE_FEATURE_DIM, np.float32)
    L = CANDIDATE_LAYOUT
    lo[L["relative_heights"]] = -1.0
    lo[L["log_rel_rate"]], hi[L["log_rel_rate"]] = -3.0, 0.0
    lo[L["log_rate"]], hi[L["log_rate"]] = -4.0, 2.0
    lo[L["z_above_mean"]], hi[L["z_above_mean"]] = -2.0, 2.0
    glo = np.zeros(GLOBAL_FEATURE_DIM, np.float32)
    ghi = np.ones(GLOBAL_FEATURE_DIM, np.float32)
    for name, (a, b) in {
        "mean_height": (0.0, 10.0), "roughness": (0.0, 10.0), "o_ti_ratio": (0.0, 5.0),
        "log_total_rate_per_column": (-4.0, 2.0), "log_deposition_share": (-3.0, 0.0),
        "temperature": (0.0, 5.0), "log_deposition_rate": (-3.0, 3.0), "o_ti_flux_ratio": (0.0, 5.0),
    }.items():
        i = GLOBAL_FEATURE_NAMES.index(name)
        glo[i], ghi[i] = a, b
    return lo, hi, glo, ghi


CANDIDATE_FEATURE_LOW, CANDIDATE_FEATURE_HIGH, GLOBAL_FEATURE_LOW, GLOBAL_FEATURE_HIGH = _bounds()


def _log10_ratio(num, den, lo, hi):
    """clip(log10(num / den), lo, hi) with den <= 0 read as 'ratio unknown' -> lo (no NaN)."""
    safe_den = jnp.where(den > 0, den, 1.0)
    val = jnp.log10(jnp.maximum(num, 0.0) / safe_den)  # -inf for num == 0
    return jnp.clip(jnp.where(den > 0, val, lo), lo, hi)


def candidate_features(lattice: LatticeState, candidates: Event) -> jnp.ndarray:
    """(K, CANDIDATE_FEATURE_DIM) float32 features of the K candidates (layout in the module doc)."""
    lx, ly, lz = lattice.lx, lattice.ly, lattice.lz
    c = candidates.column
    x, y = c // ly, c % ly
    z = candidate_site_z(lattice, candidates)  # (K,)
    h = lattice.heights[c]

    # 19 sites around (c, z).
    off = jnp.asarray(SITE_OFFSETS)
    cols = ((x[:, None] + off[:, 0]) % lx) * ly + (y[:, None] + off[:, 1]) % ly  # (K, 19)
    zs = z[:, None] + off[:, 2]
    zc = jnp.clip(zs, 0, lz - 1)
    sp = lattice.species[cols, zc]
    ox = lattice.oxide[cols, zc]
    sp = jnp.where(zs < 0, jnp.int8(SUBSTRATE), jnp.where(zs >= lz, jnp.int8(VACANT), sp))
    ox = jnp.where((zs < 0) | (zs >= lz), jnp.int8(0), ox)
    codes = jnp.array([VACANT, TI, O, SUBSTRATE], jnp.int8)
    site_feat = jnp.concatenate([(sp[..., None] == codes).astype(jnp.float32), ox[..., None].astype(jnp.float32)], -1)
    site_feat = site_feat.reshape(c.shape[0], N_SITES * SITE_CHANNELS)

    # Heights of the 8 surrounding columns relative to the candidate's column.
    coff = jnp.asarray(COLUMN_OFFSETS)
    ncols = ((x[:, None] + coff[:, 0]) % lx) * ly + (y[:, None] + coff[:, 1]) % ly  # (K, 8)
    dh = lattice.heights[ncols] - h[:, None]
    rel_h = jnp.clip(dh, -HEIGHT_CLIP, HEIGHT_CLIP).astype(jnp.float32) / HEIGHT_CLIP

    kind = candidates.kind
    kind_1h = (kind[:, None] == jnp.arange(N_EVENT_KINDS)).astype(jnp.float32)
    direction = candidates.slot - K_HOP0
    dir_1h = ((kind == HOP)[:, None] & (direction[:, None] == jnp.arange(N_DIRECTIONS))).astype(jnp.float32)

    log_rel = _log10_ratio(candidates.rate, lattice.total, -30.0, 0.0) / 10.0
    log_abs = _log10_ratio(candidates.rate, jnp.float64(1.0), -40.0, 20.0) / 10.0
    mean_h = mean_height_from_atoms(lattice)
    z_over_lz = z / lz
    z_above = jnp.clip(z - mean_h, -8.0, 8.0) / 4.0
    scalars = jnp.stack([log_rel, log_abs, z_over_lz, z_above], axis=-1).astype(jnp.float32)
    return jnp.concatenate([site_feat, rel_h, kind_1h, dir_1h, scalars], axis=-1)


def global_features(
    lattice: LatticeState, tables: RateTables, physics: PhysicsParams, progress, heights: dict | None = None
) -> jnp.ndarray:
    """(GLOBAL_FEATURE_DIM,) float32 film-level features (layout in the module doc).

    ``O(C)`` over the heights plus one ``O(N)`` int8 count of the oxide flags (as
    :func:`swarm_jax.physics.observables`). ``heights``: the lattice's
    :func:`~swarm_jax.physics.film_observables.height_stats` when the caller has them already.

    ``progress`` is the episode's fraction done, in [0, 1].
    """
    hs = height_stats(lattice) if heights is None else heights
    h = lattice.heights[: lattice.n_columns]
    return assemble_global_features(lattice, tables, physics, progress, heights=hs,
                                    n_oxide=lattice.n_oxide, n_open=jnp.sum(h < lattice.lz - 1))


def assemble_global_features(lattice: LatticeState, tables: RateTables, physics: PhysicsParams,
                             progress, *, heights: dict, n_oxide, n_open) -> jnp.ndarray:
    """The global feature vector from film summary statistics.

    ``heights``: the :func:`~swarm_jax.physics.film_observables.height_stats` keys (layers);
    ``n_oxide``: oxide atoms; ``n_open``: columns below the top layer. Shared by
    :func:`global_features` (statistics from the whole height map) and by production runs that
    keep the statistics incrementally (:mod:`swarm_jax.swarm.policy`), so both give the same
    layout and scaling.
    """
    n_cols = lattice.n_columns
    top = lattice.lz - 1
    mean_h, h_max, h_min = heights["mean_height"], heights["h_max"], heights["h_min"]
    n = lattice.deposited - lattice.desorbed
    n_ti, n_o = n[0].astype(jnp.float64), n[1].astype(jnp.float64)
    n_atoms = n_ti + n_o
    ti_fraction = jnp.where(n_atoms > 0, n_ti / jnp.maximum(n_atoms, 1.0), 0.0)
    o_ti = o_ti_ratio(n_ti, n_o)
    oxide = oxide_fraction(jnp.asarray(n_oxide).astype(jnp.float64), n_atoms)
    r_dep = n_open * tables.dep.sum()
    feats = jnp.stack([
        jnp.clip(mean_h / 10.0, 0.0, 10.0),
        mean_h / top,
        h_max / top,
        h_min / top,
        jnp.clip(heights["roughness"] / 2.0, 0.0, 10.0),
        heights["coverage"],
        ti_fraction,
        jnp.clip(o_ti / 2.0, 0.0, 5.0),
        oxide,
        _log10_ratio(lattice.total, jnp.float64(n_cols), -40.0, 20.0) / 10.0,
        _log10_ratio(r_dep, lattice.total, -30.0, 0.0) / 10.0,
        jnp.clip(jnp.asarray(physics.temperature, jnp.float64) / 1000.0, 0.0, 5.0),
        _log10_ratio(jnp.asarray(physics.deposition_rate, jnp.float64), jnp.float64(1.0), -9.0, 9.0) / 3.0,
        jnp.clip(jnp.asarray(physics.o_ti_flux_ratio, jnp.float64) / 2.0, 0.0, 5.0),
        jnp.clip(jnp.asarray(progress, jnp.float64), 0.0, 1.0),
    ])
    return feats.astype(jnp.float32)
