"""Analysis of film surfaces and simulation runs (NumPy only; matplotlib lazily, Agg canvas).

- :mod:`~swarm_jax.analysis.morphology`: W, mean height, coverage, G(r), autocorrelation, α.
- :mod:`~swarm_jax.analysis.exponents`: log-log OLS fits with OLS and replica-bootstrap errors, β.
- :mod:`~swarm_jax.analysis.importance`: SNIS estimates with standard errors, batch ESS, PSIS k̂,
  the reliability flag of importance-weighted results, mean ± standard error.
- :mod:`~swarm_jax.analysis.gsf`: Gwyddion Simple Field export/import (heights in metres).
- :mod:`~swarm_jax.analysis.plots`: PNG figures (imported on use; pulls in matplotlib).

The command line front end is :mod:`swarm_jax.analyze`. Nothing here imports JAX.
"""

from swarm_jax.analysis.exponents import (
    ExponentFit,
    effective_sample_size,
    fit_growth_exponent,
    fit_replica_exponent,
    loglog_fit,
    replica_mean,
)
from swarm_jax.analysis.gsf import read_gsf, write_gsf
from swarm_jax.analysis.morphology import (
    autocorrelation,
    coverage,
    fit_roughness_exponent,
    height_height_correlation,
    mean_height,
    roughness,
)

__all__ = [
    "ExponentFit",
    "autocorrelation",
    "coverage",
    "effective_sample_size",
    "fit_growth_exponent",
    "fit_replica_exponent",
    "fit_roughness_exponent",
    "height_height_correlation",
    "loglog_fit",
    "mean_height",
    "read_gsf",
    "replica_mean",
    "roughness",
    "write_gsf",
]
