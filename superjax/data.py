"""Synthetic superposition data: y = A z (+ noise), with known dictionary A and sparse codes z.

A ∈ R^{M×N} has unit-norm columns (atoms); each code z ∈ R^N has K active features (exactly K, or
K on average for Bernoulli supports). N > M is superposition. Every sampler is pure and key-first;
shapes come from a frozen :class:`DataConfig`, so ``jax.jit(f, static_argnames="config")`` and
``jax.vmap`` over keys work. :func:`batch_at` folds the step into the key, so a run that restarts
at step s draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superjax import _checks

SUPPORTS = ("exact", "bernoulli")
FREQUENCIES = ("uniform", "zipf")
DICTIONARIES = ("gaussian", "clustered")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The canonical synthetic problem and its variations (sparse-recovery.md §5).

    Attributes:
      m: number of neurons (measurement dimension M).
      n: number of features (dictionary size N).
      k: active features per sample (exactly K for ``support="exact"``, expected K for
        ``support="bernoulli"``).
      signed: amplitudes N(0, 1) if True, else half-normal |N(0, 1)| (non-negative codes).
      support: "exact" (K of N without replacement) or "bernoulli" (independent activations).
      frequencies: "uniform" or "zipf" (feature i chosen with weight (i + 1)^-zipf_exponent).
      zipf_exponent: exponent of the Zipf-like feature frequencies.
      dictionary: "gaussian" (i.i.d. Gaussian atoms) or "clustered" (controlled coherence).
      n_clusters: number of cluster centres for ``dictionary="clustered"``.
      cluster_angle: angle (radians) between each clustered atom and its centre.
      noise_std: standard deviation of i.i.d. Gaussian noise added to every entry of y.
    """

    m: int
    n: int
    k: int
    signed: bool = False
    support: str = "exact"
    frequencies: str = "uniform"
    zipf_exponent: float = 1.0
    dictionary: str = "gaussian"
    n_clusters: int = 8
    cluster_angle: float = 0.3
    noise_std: float = 0.0

    def __post_init__(self):
        _checks.positive_int("m", self.m)
        _checks.sparsity(self.k, self.n)
        _checks.one_of("support", self.support, SUPPORTS)
        _checks.one_of("frequencies", self.frequencies, FREQUENCIES)
        _checks.one_of("dictionary", self.dictionary, DICTIONARIES)
        _checks.real_number("zipf_exponent", self.zipf_exponent, minimum=0.0)
        # n_clusters only shapes clustered dictionaries; a Gaussian one may have N < n_clusters.
        _checks.positive_int("n_clusters", self.n_clusters,
                             maximum=self.n if self.dictionary == "clustered" else None)
        _checks.real_number("cluster_angle", self.cluster_angle, minimum=0.0, maximum=jnp.pi / 2)
        _checks.real_number("noise_std", self.noise_std, minimum=0.0)


class Batch(NamedTuple):
    """Observed activations and the ground-truth codes that produced them."""

    y: Float[Array, "batch m"]
    z: Float[Array, "batch n"]


def normalize_columns(a: Float[Array, "m n"], eps: float = 1e-12) -> Float[Array, "m n"]:
    """Scales every column to unit Euclidean norm."""
    return a / jnp.maximum(jnp.linalg.norm(a, axis=0, keepdims=True), eps)


def gaussian_dictionary(key: PRNGKeyArray, m: int, n: int) -> Float[Array, "m n"]:
    """I.i.d. Gaussian atoms normalised to unit length (uniform on the sphere S^{m-1})."""
    _checks.positive_int("m", m)
    _checks.positive_int("n", n)
    return _gaussian_dictionary(key, m, n)


# The samplers below are compiled whole per shape (one program instead of one per random draw
# and per operation when called eagerly: the draws' threefry kernels dominate compile time).
@functools.partial(jax.jit, static_argnums=(1, 2))
def _gaussian_dictionary(key: PRNGKeyArray, m: int, n: int) -> Float[Array, "m n"]:
    return normalize_columns(jax.random.normal(key, (m, n)))


def clustered_dictionary(
    key: PRNGKeyArray, m: int, n: int, n_clusters: int, angle: float
) -> Float[Array, "m n"]:
    """Atoms in ``n_clusters`` groups, each atom at exactly ``angle`` radians from its centre.

    Atom j = cos(angle)·c + sin(angle)·u, with c its group's random unit centre and u a random unit
    vector orthogonal to c. Two atoms of one group have cosine ≈ cos²(angle) when m is large, so the
    angle controls the mutual coherence.
    """
    _checks.positive_int("m", m, minimum=2)
    _checks.positive_int("n", n)
    _checks.positive_int("n_clusters", n_clusters, maximum=n)
    if _checks.is_concrete(angle):
        _checks.real_number("angle", angle, minimum=0.0, maximum=jnp.pi / 2)
    return _clustered_dictionary(key, m, n, n_clusters, angle)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _clustered_dictionary(key, m: int, n: int, n_clusters: int, angle) -> Float[Array, "m n"]:
    key_c, key_u = jax.random.split(key)
    centres = _gaussian_dictionary(key_c, m, n_clusters)[:, jnp.arange(n) % n_clusters]
    u = jax.random.normal(key_u, (m, n))
    u = normalize_columns(u - centres * jnp.sum(u * centres, axis=0, keepdims=True))
    return jnp.cos(angle) * centres + jnp.sin(angle) * u


def make_dictionary(key: PRNGKeyArray, config: DataConfig) -> Float[Array, "m n"]:
    """The ground-truth dictionary A for ``config``."""
    if config.dictionary == "clustered":
        return clustered_dictionary(key, config.m, config.n, config.n_clusters,
                                    config.cluster_angle)
    return gaussian_dictionary(key, config.m, config.n)


def feature_log_weights(config: DataConfig) -> Float[Array, " n"]:
    """Unnormalised log selection weights of the N features (all 0 for uniform frequencies)."""
    return jnp.asarray(_log_weights(config), dtype=jnp.float32)


def _log_weights(config: DataConfig) -> np.ndarray:
    if config.frequencies == "zipf":
        return -config.zipf_exponent * np.log1p(np.arange(config.n, dtype=np.float64))
    return np.zeros(config.n)


def feature_probabilities(config: DataConfig) -> Float[Array, " n"]:
    """Per-feature activation probabilities for Bernoulli supports, summing to K.

    Proportional to the selection weights and scaled to sum to K; a feature whose probability
    would exceed 1 is capped at 1 and the remainder is redistributed over the others. Depends on
    the (static) config only, so it is computed on the host.
    """
    w = np.exp(_log_weights(config))
    capped = np.zeros(config.n, dtype=bool)
    while True:
        scale = (config.k - capped.sum()) / w[~capped].sum()
        over = ~capped & (w * scale > 1.0)
        if not over.any():
            return jnp.asarray(np.where(capped, 1.0, w * scale), dtype=jnp.float32)
        capped |= over


@functools.partial(jax.jit, static_argnames=("config", "batch_size"))
def sample_support(
    key: PRNGKeyArray, config: DataConfig, batch_size: int, *, k: Int[Array, ""] | None = None
) -> Float[Array, "batch n"]:
    """0/1 masks of active features, shape (batch_size, N).

    ``k`` (fixed-K supports only) may be a traced integer that replaces ``config.k``: the same
    draw, selected by rank instead of ``top_k``, so one compiled program serves every K.
    """
    logw = feature_log_weights(config)
    if config.support == "bernoulli":
        p = feature_probabilities(config)
        return jax.random.bernoulli(key, p, (batch_size, config.n)).astype(jnp.float32)
    # Gumbel-top-k draws K distinct features with probability proportional to the weights,
    # sequentially without replacement (uniform weights: every K-subset equally likely).
    scores = logw + jax.random.gumbel(key, (batch_size, config.n))
    if k is not None:  # the K largest scores, ties to the lower index as in top_k
        rank = jnp.argsort(jnp.argsort(-scores, axis=-1, stable=True), axis=-1)
        return (rank < k).astype(jnp.float32)
    _, idx = jax.lax.top_k(scores, config.k)
    return jnp.zeros((batch_size, config.n)).at[jnp.arange(batch_size)[:, None], idx].set(1.0)


def sample_codes(key: PRNGKeyArray, config: DataConfig, batch_size: int, *,
                 k: Int[Array, ""] | None = None) -> Float[Array, "b n"]:
    """Sparse codes: support from :func:`sample_support`, amplitudes N(0,1) or |N(0,1)|."""
    _checks.positive_int("batch_size", batch_size)
    return _sample_codes(key, config, batch_size, k)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample_codes(key, config: DataConfig, batch_size: int, k) -> Float[Array, "b n"]:
    key_s, key_a = jax.random.split(key)
    amplitude = jax.random.normal(key_a, (batch_size, config.n))
    if not config.signed:
        amplitude = jnp.abs(amplitude)
    return sample_support(key_s, config, batch_size, k=k) * amplitude


def sample_batch(
    key: PRNGKeyArray, dictionary: Float[Array, "m n"], config: DataConfig, batch_size: int
) -> Batch:
    """Draws codes z and activations y = A z + noise."""
    _checks.float_array("dictionary", dictionary, ndims=(2,))
    _checks.same_size("dictionary rows", dictionary.shape[0], "config.m", config.m)
    _checks.same_size("dictionary columns", dictionary.shape[1], "config.n", config.n)
    _checks.positive_int("batch_size", batch_size)
    return _sample_batch(key, dictionary, config, batch_size)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sample_batch(key, dictionary: Float[Array, "m n"], config: DataConfig, batch_size: int
                  ) -> Batch:
    key_z, key_e = jax.random.split(key)
    z = _sample_codes(key_z, config, batch_size, None)
    y = z @ dictionary.T
    if config.noise_std > 0:
        y = y + config.noise_std * jax.random.normal(key_e, y.shape)
    return Batch(y=y, z=z)


def batch_at(
    key: PRNGKeyArray,
    step: int | Int[Array, ""],
    dictionary: Float[Array, "m n"],
    config: DataConfig,
    batch_size: int,
) -> Batch:
    """The batch of training step ``step``: the same step always gives the same batch."""
    return sample_batch(jax.random.fold_in(key, step), dictionary, config, batch_size)
