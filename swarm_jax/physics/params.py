"""Physical parameters of the TiO2 growth model and the rate catalogue derived from them.

Every number of docs/physics.md, Events and rates, is a field of :class:`PhysicsParams` (a pytree, so temperatures and
fluxes can be traced, vmapped or swept). The bond-counting model has a small, finite set of
distinct rates; :func:`make_rate_tables` evaluates all of them once, in log-space, so the hot
event loop only gathers from small tables and never calls ``exp``.

Units: energies in eV, temperature in K, attempt frequency and rates in Hz (events per second),
fluxes in monolayers per second (ML/s; one ML is one atom per column).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from swarm_jax.validation import require_x64

K_B_EV = 8.617333e-5  # Boltzmann constant, eV/K

# Species codes stored in the lattice (int8).
VACANT, TI, O, SUBSTRATE = 0, 1, 2, 3
SPECIES_NAMES = {VACANT: "vacant", TI: "Ti", O: "O", SUBSTRATE: "substrate"}

# Lateral directions, in the fixed neighbour order used everywhere (hops, bonds, reactions).
# (dx, dy) for +x, -x, +y, -y.
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))
N_DIRECTIONS = 4


def _is_tracer(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def concrete_number(value):
    """``value`` as a Python float if it is a concrete real number (a Python or NumPy scalar, a
    0-d NumPy array or a concrete 0-d JAX array); ``None`` for anything else (tracers inside
    ``jit``/``vmap``, batched values, placeholders JAX uses while rebuilding pytrees), which is
    not checked."""
    values = concrete_values(value)
    return float(values) if values is not None and values.ndim == 0 else None


def concrete_values(value) -> np.ndarray | None:
    """The float64 NumPy values of a concrete real number or array (Python/NumPy number, NumPy
    array, concrete JAX array, of any shape: sweeps hold one value per entry); ``None`` for
    tracers, booleans and anything that is not a real number (not checked here)."""
    if isinstance(value, (bool, np.bool_)) or _is_tracer(value):
        return None
    if isinstance(value, (numbers.Real, np.integer, np.floating)):
        return np.asarray(float(value))
    if isinstance(value, (np.ndarray, jax.Array)):
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            return None
        return np.asarray(value, dtype=np.float64)
    return None


def check_type(owner: str, name: str, value, allowed: str = "a real number") -> None:
    """Raise one ``TypeError`` naming ``owner.name``, the value and what is allowed when ``value``
    is a string, ``None``, a boolean (booleans are not numbers: ``temperature=True`` would be
    1 K) or a non-numeric array. Tracers and other objects (pytree placeholders such as
    ``ShapeDtypeStruct`` or shardings) pass unchecked."""
    dtype = getattr(value, "dtype", None)
    bad = (value is None or isinstance(value, (str, bytes, bool, np.bool_))
           or (isinstance(value, (np.ndarray, jax.Array)) and not _is_tracer(value)
               and not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))))
    if bad:
        kind = f"{type(value).__name__}" + (f" of dtype {dtype}" if dtype is not None else "")
        raise TypeError(f"{owner}.{name} = {_show(value)}: must be {allowed}, not {kind}")


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_range(owner: str, name: str, value, lo=None, hi=None, lo_open: bool = False,
                hi_open: bool = False, unit: str = "") -> None:
    """Raise ``ValueError`` naming ``owner.name`` and the allowed range when the concrete
    ``value`` (every entry of a concrete array) is NaN, infinite or outside it (tracers and
    non-numeric placeholders pass: see :func:`concrete_values`)."""
    x = concrete_values(value)
    if x is None or x.size == 0:
        return
    ok = bool(np.all(np.isfinite(x))) and (lo is None or bool(np.all(x > lo if lo_open else x >= lo))) \
        and (hi is None or bool(np.all(x < hi if hi_open else x <= hi)))
    if not ok:
        if lo is not None and hi is not None:
            allowed = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            allowed = f"{'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            allowed = f"{'<' if hi_open else '<='} {hi:g}"
        else:
            allowed = "finite"
        raise ValueError(f"{owner}.{name} = {_show(value)}: must be a finite number {allowed}"
                         f"{' ' + unit if unit else ''}")


#: Allowed ranges of PhysicsParams fields: (lower, upper, lower open, unit); every field must
#: be finite, those not listed may have any sign (energies, bond energies).
PHYSICS_RANGES = {
    "temperature": (0.0, None, True, "K"),
    "deposition_rate": (0.0, None, False, "ML/s"),
    "o_ti_flux_ratio": (0.0, None, False, ""),
    "sticking_ti": (0.0, 1.0, False, ""),
    "sticking_o": (0.0, 1.0, False, ""),
    "attempt_frequency": (0.0, None, True, "Hz"),
    "oxide_hop_factor": (0.0, None, True, ""),
    "bond_scale": (0.0, None, False, ""),
}


@dataclasses.dataclass(frozen=True)
class PhysicsParams:
    """Parameters of docs/physics.md, Events and rates, with its defaults. All fields are pytree leaves (traceable).

    Construction (``PhysicsParams(...)``, :meth:`replace`) validates concrete values (Python/NumPy
    numbers, NumPy arrays and concrete JAX arrays, every entry of a sweep) against
    :data:`PHYSICS_RANGES` (every field finite): a bad one raises one ``ValueError`` naming the
    field, the value and its allowed range; a string, ``None`` or a boolean (booleans are not
    numbers: ``temperature=True`` would be 1 K) raises one ``TypeError``. Traced values (inside
    ``jit``/``vmap``/``grad``) cannot be and are not checked. Pytree rebuilds by JAX
    (``jax.tree.map``, gradients, ``in_axes`` specs, outputs of ``jit``) do not construct: they
    are not checked either (a gradient or a mask is not a set of physical values).
    """

    temperature: float = 300.0  # K
    deposition_rate: float = 1.0  # total flux F, ML/s
    o_ti_flux_ratio: float = 2.0  # r: F_O = r * F_Ti, F_Ti = F / (1 + r)
    sticking_ti: float = 0.90
    sticking_o: float = 0.75
    attempt_frequency: float = 1.0e13  # nu, Hz
    e_diff_ti: float = 0.6  # E_d(Ti), eV
    e_diff_o: float = 0.8  # E_d(O), eV
    e_es: float = 0.15  # Ehrlich-Schwoebel barrier for a hop down a step, eV
    oxide_hop_factor: float = 3.0  # hop barrier multiplier for an atom in an oxide unit
    eps_ti_o: float = -4.5  # pair bond energies, eV
    eps_ti_ti: float = -2.0
    eps_o_o: float = -1.5
    bond_scale: float = 0.1  # lambda: E_n(s, s') = lambda * |eps(s, s')|
    e_des_ti: float = 2.0  # E_des0(Ti), eV
    e_des_o: float = 2.5  # E_des0(O), eV
    e_react_scale: float = 0.3  # E_r = scale * (base + slope * n / 6), eV
    e_react_base: float = 0.8
    e_react_slope: float = 0.4

    def __post_init__(self):
        for f in self.__dataclass_fields__:
            value = getattr(self, f)
            lo, hi, lo_open, unit = PHYSICS_RANGES.get(f, (None, None, False, "eV"))
            check_type("PhysicsParams", f, value, f"a real number ({unit or 'dimensionless'})")
            check_range("PhysicsParams", f, value, lo, hi, lo_open=lo_open, unit=unit)

    def replace(self, **updates) -> "PhysicsParams":
        """A copy with ``updates`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **updates)

    @property
    def kT(self):
        """Thermal energy k_B T in eV."""
        return K_B_EV * self.temperature

    def bond_energy(self):
        """(3, 3) lateral bond energy E_n(s, s') in eV, indexed by species code (0 = vacant)."""
        lam = self.bond_scale
        e_ti_ti = lam * jnp.abs(self.eps_ti_ti)
        e_ti_o = lam * jnp.abs(self.eps_ti_o)
        e_o_o = lam * jnp.abs(self.eps_o_o)
        zero = jnp.zeros_like(e_ti_ti)
        return jnp.array(
            [
                [zero, zero, zero],
                [zero, e_ti_ti, e_ti_o],
                [zero, e_ti_o, e_o_o],
            ]
        )


_PHYSICS_FIELDS = tuple(f.name for f in dataclasses.fields(PhysicsParams))


def _physics_unflatten(_, leaves) -> PhysicsParams:
    """Rebuilds a PhysicsParams from pytree leaves without running the constructor's checks."""
    obj = object.__new__(PhysicsParams)
    for name, leaf in zip(_PHYSICS_FIELDS, leaves):
        object.__setattr__(obj, name, leaf)
    return obj


jax.tree_util.register_pytree_with_keys(
    PhysicsParams,
    lambda p: ([(jax.tree_util.GetAttrKey(n), getattr(p, n)) for n in _PHYSICS_FIELDS], None),
    _physics_unflatten,
    lambda p: ([getattr(p, n) for n in _PHYSICS_FIELDS], None),
)


@struct.dataclass
class RateTables:
    """Every distinct rate of the model, in Hz (float64), and their natural logs.

    Indices: ``s`` = species (0 Ti, 1 O), ``ox`` = oxide flag, ``es`` = 1 when the hop goes down
    a step, ``nti``/``no`` = number of lateral Ti / O neighbours (0..4, ``nti + no <= 4``),
    ``n`` = occupied NN count of a reacting Ti (0..6).

    Attributes:
      dep: (2,) per-column deposition rates [Ti, O] = F_s * S_s.
      hop: (2, 2, 2, 5, 5) hop rate per direction, [s, ox, es, nti, no].
      desorb: (2, 5, 5) desorption rate, [s, nti, no].
      react: (7,) reaction rate by n.
      log_*: natural logs of the same (``-inf`` where a rate is zero); used for features.
    """

    dep: jnp.ndarray
    hop: jnp.ndarray
    desorb: jnp.ndarray
    react: jnp.ndarray
    log_dep: jnp.ndarray
    log_hop: jnp.ndarray
    log_desorb: jnp.ndarray
    log_react: jnp.ndarray


def make_rate_tables(params: PhysicsParams) -> RateTables:
    """Evaluates the whole rate catalogue in log-space (float64). Pure and jit-able.

    Raises :class:`~swarm_jax.validation.X64Error` when JAX's 64-bit mode is off."""
    require_x64("rate tables (physics.make_rate_tables)")
    f64 = jnp.float64
    kT = jnp.asarray(params.kT, f64)
    log_nu = jnp.log(jnp.asarray(params.attempt_frequency, f64))
    bond = params.bond_energy().astype(f64)  # (3, 3) by species code

    counts = jnp.arange(5, dtype=f64)
    species = jnp.array([1, 2])  # Ti, O codes
    # Sum of lateral bond energies with nti Ti and no O neighbours: [s, nti, no].
    e_bonds = (
        bond[species, 1][:, None, None] * counts[None, :, None]
        + bond[species, 2][:, None, None] * counts[None, None, :]
    )

    e_diff = jnp.array([params.e_diff_ti, params.e_diff_o], f64)
    es = jnp.array([0.0, 1.0], f64) * params.e_es
    e_hop = e_diff[:, None, None, None] + e_bonds[:, None, :, :] + es[None, :, None, None]
    oxide_factor = jnp.array([1.0, params.oxide_hop_factor], f64)
    e_hop = oxide_factor[None, :, None, None, None] * e_hop[:, None]  # [s, ox, es, nti, no]
    log_hop = log_nu - e_hop / kT

    e_des0 = jnp.array([params.e_des_ti, params.e_des_o], f64)
    log_desorb = log_nu - (e_des0[:, None, None] + e_bonds) / kT

    n = jnp.arange(7, dtype=f64)
    e_r = params.e_react_scale * (params.e_react_base + params.e_react_slope * n / 6.0)
    log_react = log_nu - e_r / kT

    flux = jnp.asarray(params.deposition_rate, f64)
    ratio = jnp.asarray(params.o_ti_flux_ratio, f64)
    f_ti = flux / (1.0 + ratio)
    dep = jnp.stack([f_ti * params.sticking_ti, ratio * f_ti * params.sticking_o]).astype(f64)
    log_dep = jnp.log(dep)

    # Unphysical (nti + no > 4) entries can never be gathered; zero them for cleanliness.
    feasible = (jnp.arange(5)[:, None] + jnp.arange(5)[None, :]) <= 4
    log_hop = jnp.where(feasible, log_hop, -jnp.inf)
    log_desorb = jnp.where(feasible, log_desorb, -jnp.inf)
    return RateTables(
        dep=dep,
        hop=jnp.exp(log_hop),
        desorb=jnp.exp(log_desorb),
        react=jnp.exp(log_react),
        log_dep=log_dep,
        log_hop=log_hop,
        log_desorb=log_desorb,
        log_react=log_react,
    )
