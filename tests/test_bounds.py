"""Compressed-sensing bounds: two independent routes to the Donoho–Tanner curve, closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from superjax import bounds, data


def _reference_rho_weak(delta, kappa):
    """Independent float64 scipy evaluation of the state-evolution formula."""

    def neg(t):
        j = kappa * ((1 + t * t) * stats.norm.cdf(-t) - t * stats.norm.pdf(t))
        return -(1 - j / delta) / (1 + t * t - j)

    return -optimize.minimize_scalar(neg, bounds=(0, 20), method="bounded",
                                     options={"xatol": 1e-10}).fun


@pytest.mark.parametrize("signed", [True, False])
def test_rho_weak_matches_scipy_reference(signed):
    deltas = np.array([0.02, 0.1, 0.25, 0.5, 0.75, 0.9])
    ours = np.asarray(bounds.rho_weak(deltas, signed))
    ref = [_reference_rho_weak(d, 2.0 if signed else 1.0) for d in deltas]
    np.testing.assert_allclose(ours, ref, atol=2e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_statistical_dimension_and_state_evolution_agree(signed):
    # The minimal M from the statistical dimension lies on the weak threshold: ρ_W(ψ(ε)) = ε/ψ(ε).
    eps = jnp.array([0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7])
    psi = bounds.statistical_dimension(eps, signed)
    np.testing.assert_allclose(bounds.rho_weak(psi, signed), eps / psi, atol=1e-3)


def test_curves_are_ordered_and_monotone():
    deltas = jnp.linspace(0.02, 0.98, 49)
    signed, nonneg = bounds.rho_weak(deltas, True), bounds.rho_weak(deltas, False)
    assert np.all(np.diff(signed) > 0) and np.all(np.diff(nonneg) > 0)
    # Non-negative codes are recoverable in a strictly larger region.
    assert np.all(nonneg > signed)


@pytest.mark.parametrize("signed", [True, False])
def test_small_delta_asymptote(signed):
    # ρ_W ≈ 1/(2 ln(1/δ)): the ratio tends to 1, with log-log corrections (slow), so the relative
    # error shrinks steadily once δ is deep in the asymptotic regime.
    with jax.enable_x64(True):
        deltas = jnp.array([1e-8, 1e-16, 1e-32, 1e-64], dtype=jnp.float64)
        ratio = np.asarray(bounds.rho_weak(deltas, signed) / bounds.rho_weak_small_delta(deltas))
    err = np.abs(ratio - 1)
    assert np.all(np.diff(err) < 0), err
    assert err[-1] < 0.02


def test_min_measurements_is_the_boundary():
    for n, k in [(200, 10), (1024, 20), (500, 100)]:
        for signed in (True, False):
            m = bounds.min_measurements(n, k, signed)
            assert bounds.recovery_bounds(m + 1, n, k, signed).recoverable
            assert not bounds.recovery_bounds(m - 1, n, k, signed).recoverable


def test_welch_bound_attained_by_equiangular_frame():
    # Mercedes-Benz frame: 3 unit vectors in R^2 at 120°, coherence 1/2 = Welch bound.
    angles = 2 * np.pi * np.arange(3) / 3
    frame = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)]))
    assert math.isclose(float(bounds.mutual_coherence(frame)), 0.5, rel_tol=1e-6)
    assert math.isclose(bounds.welch_bound(2, 3), 0.5, rel_tol=1e-12)


def test_random_dictionary_coherence_above_welch():
    a = data.gaussian_dictionary(jax.random.key(0), 16, 64)
    assert float(bounds.mutual_coherence(a)) >= bounds.welch_bound(16, 64)
    assert float(bounds.mutual_coherence(jnp.eye(8))) == 0.0


def test_coherence_guarantee_closed_form():
    assert float(bounds.coherence_sparsity_limit(1 / 3)) == pytest.approx(2.0)


def test_k_log_n_over_k():
    assert bounds.k_log_n_over_k(1024, 20) == pytest.approx(20 * math.log(1024 / 20))


def test_rip_estimate_orthonormal_and_gaussian():
    est = bounds.rip_estimate(jax.random.key(0), jnp.eye(32), 5, trials=50)
    assert float(est.delta_k) < 1e-6
    m, k = 400, 4
    dictionary = data.gaussian_dictionary(jax.random.key(2), m, 800)
    est = bounds.rip_estimate(jax.random.key(1), dictionary, k, trials=200)
    # Unit-norm columns: all squared singular values within the Marchenko–Pastur edges (1 ± √(k/m))²
    # up to a small margin, and δ_K within [0, 1).
    edge = math.sqrt(k / m)
    assert float(est.sigma_max_sq.max()) < (1 + 2 * edge) ** 2
    assert float(est.sigma_min_sq.min()) > (1 - 2 * edge) ** 2
    assert 0 < float(est.delta_k) < 1


def test_rip_estimate_k_above_m_is_not_an_isometry():
    est = bounds.rip_estimate(jax.random.key(0), data.gaussian_dictionary(jax.random.key(1), 4, 16),
                              6, trials=10)
    assert float(est.delta_k) >= 1.0


def test_recovery_bounds_report():
    r = bounds.recovery_bounds(100, 200, 30, signed=True)
    assert r.delta == 0.5 and r.rho == 0.3
    assert r.recoverable == (r.rho < r.rho_weak)
    assert r.k_max == math.ceil(r.rho_weak * 100) - 1


@pytest.mark.parametrize(("args", "match"), [
    ((0, 10, 2), "m must be >= 1"),
    ((5, 10, 11), "k must be <= n"),
    ((5, 10, 0), "k must be >= 1"),
    ((20, 10, 2), "m must be <= n"),
])
def test_recovery_bounds_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        bounds.recovery_bounds(*args)


def test_bounds_bad_types():
    with pytest.raises(TypeError, match="k must be an integer"):
        bounds.min_measurements(10, 2.5)
    with pytest.raises(ValueError, match="k must be <= n"):
        bounds.k_log_n_over_k(10, 20)
    with pytest.raises(ValueError, match="k must be <= n"):
        bounds.rip_estimate(jax.random.key(0), jnp.eye(4), 5)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: bounds.rho_weak(0.0), "delta must lie in"),
    (lambda: bounds.rho_weak(jnp.array([0.5, 1.5])), "delta must lie in"),
    (lambda: bounds.rho_weak(float("nan")), "NaN or Inf"),
    (lambda: bounds.statistical_dimension(-0.1), "eps must lie in"),
    (lambda: bounds.coherence_sparsity_limit(0.0), "mu must lie in"),
    (lambda: bounds.mutual_coherence(jnp.ones(4)), "dictionary must have 2 dimensions"),
])
def test_bound_functions_validate_ranges(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bounds_jit_and_vmap():
    f = jax.jit(jax.vmap(lambda d: bounds.rho_weak(d, True)))
    np.testing.assert_allclose(f(jnp.array([0.25, 0.5])), bounds.rho_weak(jnp.array([0.25, 0.5]),
                                                                           True), atol=1e-6)
