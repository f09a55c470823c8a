"""Interpretability and identifiability metrics (sparse-recovery.md §6).

* Intrusion test: for each unit (an SAE latent, a neuron, a random direction), its top-k
  activating samples plus one intruder (below the unit's median activation, yet strongly active
  on the other units, so it is not trivially blank); a judge picks the odd one out as the sample
  least similar (mean cosine) to the others in a judge space: the true codes on synthetic data,
  the inputs (pixels) on real data. Chance is 1/(k+1).
* Label purity: the share of a unit's top-k samples that carry their majority label.
* Feature density: how often each unit fires.
* Linear identifiability: held-out R² of an affine map representation → latents, and its ceiling
  for an M-dimensional linear image of the latents.
* Additivity: Δ_AB against Δ_A + Δ_B for disjoint supports, and the same against mismatched pairs.

All functions are pure and jit-able, with argument checks at the Python boundary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from superjax import _checks


class IntrusionResult(NamedTuple):
    """Per-unit outcome of the intrusion test and its summary."""

    accuracy: Float[Array, ""]  # mean of ``correct`` over valid units (NaN when none is valid)
    chance: float  # 1/(k+1)
    correct: Bool[Array, " u"]  # the judge picked the intruder
    valid: Bool[Array, " u"]  # the unit's k-th top activation is above its median (it fires)


def _odd_one_out(points: Float[Array, "k1 p"]) -> Int[Array, ""]:
    """Index of the point with the lowest mean cosine similarity to the others."""
    norms = jnp.linalg.norm(points, axis=1, keepdims=True)
    unit = points / jnp.where(norms > 0, norms, 1.0)
    sim = unit @ unit.T
    return jnp.argmin(sim.sum(1) - jnp.diagonal(sim))


def _intrusion_units(key, acts, judge, k, window):
    strength = jnp.abs(acts).sum(1)

    def one(key, a):
        k_show, k_intruder = jax.random.split(key)
        top_vals, top_idx = jax.lax.top_k(a, k * window)
        med = jnp.median(a)
        # k of the unit's top k·window samples that are above its median, at random.
        show = jax.random.choice(k_show, top_idx, (k,), replace=False,
                                 p=(top_vals > med) / jnp.maximum(jnp.sum(top_vals > med), 1))
        pool = a <= med
        others = jnp.where(pool, strength - jnp.abs(a), jnp.nan)
        candidates = pool & (others >= jnp.nanmedian(others))
        intruder = jax.random.categorical(k_intruder, jnp.where(candidates, 0.0, -jnp.inf))
        # The intruder comes last: argmin breaks ties towards earlier indices, against it.
        picked = _odd_one_out(judge[jnp.append(show, intruder)])
        return picked == k, top_vals[k - 1] > med

    keys = jax.random.split(key, acts.shape[1])
    return jax.vmap(one, in_axes=(0, 1))(keys, acts)


def intrusion(
    key: PRNGKeyArray, activations: Float[Array, "s u"], judge: Float[Array, "s p"], k: int = 5,
    window: int = 1,
) -> IntrusionResult:
    """The intrusion test for every column (unit) of ``activations``.

    Args:
      key: picks each unit's intruder among the eligible samples.
      activations: unit activations on held-out samples (larger = more active).
      judge: the judge's view of the same samples (true codes, or inputs).
      k: top-activating samples shown per unit.
      window: show k samples drawn at random from the unit's top k·window (1: the top k). A
        window above 1 tests the unit's typical strong activations rather than its extremes, at
        which even a random direction is dominated by one latent.
    """
    activations = _checks.float_array("activations", activations, ndims=(2,))
    judge = _checks.float_array("judge", judge, ndims=(2,))
    _checks.same_size("judge samples", judge.shape[0], "activations samples",
                      activations.shape[0])
    k = _checks.positive_int("k", k, maximum=max(1, activations.shape[0] // 2 - 1))
    window = _checks.positive_int("window", window,
                                  maximum=max(1, activations.shape[0] // (2 * k)))
    correct, valid = jax.jit(_intrusion_units, static_argnums=(3, 4))(key, activations, judge, k,
                                                                     window)
    accuracy = jnp.sum(correct & valid) / jnp.where(valid.any(), valid.sum(), jnp.nan)
    return IntrusionResult(accuracy, 1.0 / (k + 1), correct, valid)


def label_purity(
    activations: Float[Array, "s u"], labels: Int[Array, " s"], classes: int, k: int = 10
) -> Float[Array, " u"]:
    """Per unit, the fraction of its top-k samples that carry their most common label."""
    activations = _checks.float_array("activations", activations, ndims=(2,))
    labels = jnp.asarray(labels)
    _checks.same_size("labels", labels.shape[0], "activations samples", activations.shape[0])
    classes = _checks.positive_int("classes", classes)
    k = _checks.positive_int("k", k, maximum=activations.shape[0])
    _, idx = jax.lax.top_k(activations.T, k)
    counts = jax.nn.one_hot(labels[idx], classes).sum(1)
    return counts.max(-1) / k


def feature_density(codes: Float[Array, "s u"], threshold: float = 0.0) -> Float[Array, " u"]:
    """Fraction of samples on which each unit's |activation| exceeds ``threshold``."""
    codes = _checks.float_array("codes", codes, ndims=(2,))
    return jnp.mean(jnp.abs(codes) > threshold, axis=0)


def linear_r2(
    y_fit: Float[Array, "s m"], z_fit: Float[Array, "s n"],
    y_test: Float[Array, "t m"], z_test: Float[Array, "t n"],
) -> Float[Array, ""]:
    """Held-out R² = 1 − Σ‖z − ẑ‖² / Σ‖z − z̄‖² of the least-squares affine map y → z."""
    y_fit, z_fit, y_test, z_test = (_checks.float_array(n, a, ndims=(2,)) for n, a in (
        ("y_fit", y_fit), ("z_fit", z_fit), ("y_test", y_test), ("z_test", z_test)))
    _checks.same_size("y_fit samples", y_fit.shape[0], "z_fit samples", z_fit.shape[0])
    _checks.same_size("y_test samples", y_test.shape[0], "z_test samples", z_test.shape[0])
    _checks.same_size("y_test columns", y_test.shape[1], "y_fit columns", y_fit.shape[1])
    _checks.same_size("z_test columns", z_test.shape[1], "z_fit columns", z_fit.shape[1])
    mu_y, mu_z = y_fit.mean(0), z_fit.mean(0)
    coef, *_ = jnp.linalg.lstsq(y_fit - mu_y, z_fit - mu_z)
    pred = (y_test - mu_y) @ coef + mu_z
    return 1.0 - jnp.sum((z_test - pred) ** 2) / jnp.sum((z_test - z_test.mean(0)) ** 2)


def linear_r2_ceiling(z: Float[Array, "s n"], m: int) -> Float[Array, ""]:
    """The best R² any m-dimensional linear image of z allows: top-m eigenvalues of Cov z / trace.

    It is 1 for m ≥ N, and about m/N for latents with nearly isotropic covariance.
    """
    z = _checks.float_array("z", z, ndims=(2,))
    m = _checks.positive_int("m", m)
    eig = jnp.linalg.eigvalsh(jnp.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]))
    return jnp.sum(eig[::-1][:m]) / jnp.sum(eig)


class Additivity(NamedTuple):
    """Means over pairs; ``null_*`` compare Δ_AB with Δ_A' + Δ_B' of another pair."""

    cos: Float[Array, ""]
    residual: Float[Array, ""]  # ‖Δ_AB − (Δ_A + Δ_B)‖ / ‖Δ_AB‖
    null_cos: Float[Array, ""]
    null_residual: Float[Array, ""]


def additivity(
    y0: Float[Array, " m"], y_a: Float[Array, "p m"], y_b: Float[Array, "p m"],
    y_ab: Float[Array, "p m"],
) -> Additivity:
    """Additivity of a representation over disjoint latent supports A and B.

    Args:
      y0: representation of the baseline input g(0).
      y_a, y_b, y_ab: representations of g(z_A), g(z_B), g(z_A + z_B) for p pairs.
    """
    y0 = _checks.float_array("y0", y0, ndims=(1,))
    y_a, y_b, y_ab = (_checks.float_array(n, a, ndims=(2,)) for n, a in (
        ("y_a", y_a), ("y_b", y_b), ("y_ab", y_ab)))
    if not y_a.shape == y_b.shape == y_ab.shape or y_a.shape[1] != y0.shape[0]:
        raise ValueError(f"y_a, y_b, y_ab must share one shape (pairs, {y0.shape[0]}); got "
                         f"{y_a.shape}, {y_b.shape}, {y_ab.shape}")
    if y_a.shape[0] < 2:
        raise ValueError("additivity needs at least 2 pairs (the null mismatches them)")
    d_ab, d_sum = y_ab - y0, (y_a - y0) + (y_b - y0)

    def scores(target, other):
        nt, no = jnp.linalg.norm(target, axis=1), jnp.linalg.norm(other, axis=1)
        cos = jnp.sum(target * other, 1) / jnp.maximum(nt * no, 1e-30)
        return jnp.mean(cos), jnp.mean(jnp.linalg.norm(target - other, axis=1)
                                        / jnp.maximum(nt, 1e-30))

    cos, res = scores(d_ab, d_sum)
    null_cos, null_res = scores(d_ab, jnp.roll(d_sum, 1, axis=0))
    return Additivity(cos, res, null_cos, null_res)
