"""A synthetic world with known latents (sparse-recovery.md §6).

* Latents z ∈ R^N: K of N active, non-negative half-normal amplitudes (the canonical codes of
  :mod:`superjax.data`).
* Observations x = g(z) ∈ R^D, D ≥ N: a fixed random leaky-ReLU MLP. Every layer is injective
  (a Gaussian D × N first matrix has full column rank, later D × D matrices are invertible, and a
  leaky ReLU is a bijection), so g is injective and z is, in principle, recoverable from x.
* Labels from a class-prototype process: C unit prototypes μ_c ∈ R^N, and
  P(c | z) ∝ exp(β ⟨μ_c, z⟩ / s) with s the spread of ⟨μ, z⟩; with equal-norm prototypes this is
  the nearest-prototype (cluster-centric) model. The cross-entropy optimum of a classifier with a
  linear head then makes its representation an affine image of z when C > N.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superjax import _checks, data

MAX_LATENTS = 4096


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Shape of the world.

    Attributes:
      latents: N. k: active latents per sample (K ≤ N).
      ambient: D, the observation dimension (default 2N; at least N, so g can be injective).
      classes: C (default 2N; more than N for linear identifiability).
      depth: layers of the generator g.
      slope: negative slope of its leaky ReLUs (1 would make g linear).
      sharpness: β, the standard deviation of the class logits (higher: more deterministic labels).
      seed: the world's generator and prototypes.
    """

    latents: int
    k: int
    ambient: int | None = None
    classes: int | None = None
    depth: int = 2
    slope: float = 0.2
    sharpness: float = 3.0
    seed: int = 0

    def __post_init__(self):
        _checks.positive_int("latents", self.latents, minimum=2, maximum=MAX_LATENTS)
        _checks.sparsity(self.k, self.latents, n_name="latents")
        if self.ambient is not None:
            _checks.positive_int("ambient", self.ambient, minimum=self.latents,
                                 maximum=16 * MAX_LATENTS)
        if self.classes is not None:
            _checks.positive_int("classes", self.classes, minimum=2, maximum=16 * MAX_LATENTS)
        _checks.positive_int("depth", self.depth)
        _checks.real_number("slope", self.slope, minimum=0.0, maximum=1.0, strict_min=True)
        _checks.real_number("sharpness", self.sharpness, minimum=0.0, strict_min=True)
        _checks.positive_int("seed", self.seed, minimum=0)

    @property
    def d(self) -> int:
        return self.ambient if self.ambient is not None else 2 * self.latents

    @property
    def c(self) -> int:
        return self.classes if self.classes is not None else 2 * self.latents

    @property
    def codes(self) -> data.DataConfig:
        return data.DataConfig(m=self.d, n=self.latents, k=self.k)


class World(NamedTuple):
    """The fixed parts: generator layers (W: out × in, b) and class prototypes (C × N)."""

    weights: tuple[Float[Array, "o i"], ...]
    biases: tuple[Float[Array, " o"], ...]
    prototypes: Float[Array, "c n"]
    slope: float
    logit_scale: float


class Sample(NamedTuple):
    z: Float[Array, "s n"]
    x: Float[Array, "s d"]
    labels: Int[Array, " s"]
    logits: Float[Array, "s c"]  # the true class logits (their argmax is the Bayes classifier)


def make_world(config: WorldConfig) -> World:
    keys = jax.random.split(jax.random.key(config.seed), 2 * config.depth + 1)
    dims = (config.latents, *([config.d] * config.depth))
    weights = tuple(jax.random.normal(keys[2 * i], (o, i_)) / math.sqrt(i_)
                    for i, (i_, o) in enumerate(zip(dims[:-1], dims[1:], strict=True)))
    biases = tuple(0.1 * jax.random.normal(keys[2 * i + 1], (o,))
                   for i, o in enumerate(dims[1:]))
    prototypes = data.normalize_columns(
        jax.random.normal(keys[-1], (config.latents, config.c))).T
    # ⟨μ, z⟩ has variance E‖z‖²/N = K/N for unit μ and half-normal amplitudes (E a² = 1).
    logit_scale = config.sharpness / math.sqrt(config.k / config.latents)
    return World(weights, biases, prototypes, config.slope, logit_scale)


def generate(world: World, z: Float[Array, "s n"]) -> Float[Array, "s d"]:
    """x = g(z): leaky-ReLU layers, the last one linear."""
    h = z
    for i, (w, b) in enumerate(zip(world.weights, world.biases, strict=True)):
        h = h @ w.T + b
        if i < len(world.weights) - 1:
            h = jax.nn.leaky_relu(h, world.slope)
    return h


def class_logits(world: World, z: Float[Array, "s n"]) -> Float[Array, "s c"]:
    return world.logit_scale * z @ world.prototypes.T


def sample(key: PRNGKeyArray, world: World, config: WorldConfig, size: int) -> Sample:
    """Draws latents, observations and labels."""
    _checks.positive_int("size", size)
    k_z, k_c = jax.random.split(key)
    z = data.sample_codes(k_z, config.codes, size)
    logits = class_logits(world, z)
    return Sample(z, generate(world, z), jax.random.categorical(k_c, logits), logits)


def disjoint_pairs(key: PRNGKeyArray, config: WorldConfig, pairs: int
                   ) -> tuple[Float[Array, "p n"], Float[Array, "p n"]]:
    """Latent pairs (z_A, z_B) with disjoint supports, each about K active (min(2K, N) in all)."""
    _checks.positive_int("pairs", pairs)
    k_z, k_split = jax.random.split(key)
    both = dataclasses.replace(config.codes, k=min(2 * config.k, config.latents))
    z = data.sample_codes(k_z, both, pairs)
    active = z > 0
    order = jnp.where(active, jax.random.uniform(k_split, z.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(order, axis=1), axis=1)
    in_a = active & (rank < active.sum(1, keepdims=True) // 2)
    return jnp.where(in_a, z, 0.0), jnp.where(in_a, 0.0, z)
