"""superjax: extract the features that neural networks store in superposition.

The light, pure API is re-exported here (no orbax, no CLI, no plotting):

* :mod:`superjax.data` — synthetic superposition data y = A z.
* :mod:`superjax.bounds` — compressed-sensing limits (Donoho–Tanner, coherence, RIP).
* :mod:`superjax.sparse_coding` — ISTA/FISTA, working-set FISTA, OMP, debiasing, basis pursuit.
* :mod:`superjax.metrics` — recovery metrics with their chance levels.
* :mod:`superjax.oracle`, :mod:`superjax.recovery`, :mod:`superjax.ridge` — query-access recovery
  of the directions of f(x) = Σ a_i σ_i(v_iᵀx) and reconstruction of f.
* :mod:`superjax.interpret`, :mod:`superjax.world` — interpretability and identifiability
  metrics, and a synthetic world with known latents.
"""

from superjax import (
    bounds,
    data,
    interpret,
    metrics,
    oracle,
    recovery,
    ridge,
    sparse_coding,
    world,
)
from superjax.bounds import recovery_bounds, rho_weak, statistical_dimension
from superjax.data import Batch, DataConfig
from superjax.sparse_coding import (
    OMPResult,
    SparseCodingResult,
    basis_pursuit,
    debias,
    fista,
    fista_fixed,
    fista_working_set,
    ista,
    omp,
)

__version__ = "0.1.0"

__all__ = [
    "Batch", "DataConfig", "OMPResult", "SparseCodingResult", "basis_pursuit", "bounds", "data",
    "debias", "fista", "fista_fixed", "fista_working_set", "interpret", "ista", "metrics", "omp",
    "oracle", "recovery", "ridge", "world",
    "recovery_bounds", "rho_weak", "sparse_coding", "statistical_dimension",
]
