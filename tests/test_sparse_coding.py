"""Sparse-coding solvers against closed forms, scikit-learn and an exact LP."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog
from sklearn.linear_model import Lasso, OrthogonalMatchingPursuit

from superjax import data
from superjax import sparse_coding as sc


def _problem(seed, m=40, n=100, batch=6):
    key_d, key_y = jax.random.split(jax.random.key(seed))
    return data.gaussian_dictionary(key_d, m, n), jax.random.normal(key_y, (batch, m))


def _sklearn_objective(d, y, lam, positive):
    # scikit-learn minimises (1/(2·n_samples))‖y − Xw‖² + α‖w‖₁ with n_samples = M rows:
    # α = λ/M gives our ½‖y − Dz‖² + λ‖z‖₁ divided by M, the same minimiser.
    d64, y64 = np.asarray(d, np.float64), np.asarray(y, np.float64)
    m = d64.shape[0]
    w = Lasso(alpha=lam / m, fit_intercept=False, positive=positive, tol=1e-14,
              max_iter=200_000).fit(d64, y64).coef_
    return 0.5 * np.sum((y64 - d64 @ w) ** 2) + lam * np.abs(w).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nonneg", [False, True])
def test_fista_reaches_sklearn_lasso_objective(seed, nonneg):
    # In float64 the certified duality gap can be driven far below the 1e-6 target.
    with jax.enable_x64(True):
        d, y = (x.astype(jnp.float64) for x in _problem(seed))
        lam = 0.05 * float(jnp.max(jnp.abs(y @ d)))
        result = sc.fista(d, y, lam, nonneg=nonneg, tol=1e-9, max_iter=50_000)
        assert bool(jnp.all(result.gap <= 1e-9 * result.objective))
    assert bool(result.converged.all())
    for i in range(y.shape[0]):
        ref = _sklearn_objective(d, y[i], lam, nonneg)
        assert abs(float(result.objective[i]) - ref) / ref < 1e-6


def test_ista_and_fista_agree_and_ista_trace_is_monotone():
    d, y = _problem(3, batch=1)
    lam = 0.1
    fast = sc.fista(d, y[0], lam, tol=1e-5, max_iter=50_000)
    slow = sc.ista(d, y[0], lam, tol=1e-5, max_iter=50_000, trace=True)
    assert bool(fast.converged) and bool(slow.converged)
    assert float(slow.objective) == pytest.approx(float(fast.objective), rel=2e-5)
    assert int(slow.iterations) > int(fast.iterations)
    tr = np.asarray(slow.trace)[: int(slow.iterations)]
    assert np.all(np.diff(tr) <= 1e-6 * tr[0])  # proximal gradient never increases the objective
    assert np.all(np.isnan(np.asarray(slow.trace)[int(slow.iterations):]))


def test_orthonormal_dictionary_closed_form():
    # D = I: the Lasso solution is the soft threshold of y.
    y = jax.random.normal(jax.random.key(0), (5, 16))
    for nonneg in (False, True):
        result = sc.fista(jnp.eye(16), y, 0.3, nonneg=nonneg)
        chex.assert_trees_all_close(result.codes, sc.soft_threshold(y, 0.3, nonneg), atol=1e-6)


def test_large_lambda_gives_zero_solution():
    d, y = _problem(4, batch=3)
    lam = jnp.max(jnp.abs(y @ d), axis=-1) * 1.0001  # λ ≥ ‖Dᵀy‖_∞ ⇔ z* = 0
    result = sc.fista(d, y, lam)
    assert float(jnp.abs(result.codes).max()) == 0.0
    assert bool(result.converged.all())


def test_batch_equals_single_samples_and_jit():
    d, y = _problem(5)
    batch = sc.fista(d, y, 0.1, tol=1e-5)
    solve = jax.jit(functools.partial(sc.fista, lam=0.1, tol=1e-5))
    for i in range(y.shape[0]):
        single = solve(d, y[i])
        # Same algorithm, same stopping rule per sample; only matmul-vs-matvec rounding differs.
        chex.assert_trees_all_close(single.codes, batch.codes[i], atol=1e-3)
        assert float(single.objective) == pytest.approx(float(batch.objective[i]), rel=1e-5)
        assert abs(int(single.iterations) - int(batch.iterations[i])) <= \
            0.05 * int(batch.iterations[i]) + 2


def test_warm_start_from_the_solution_stops_at_once():
    d, y = _problem(6, batch=2)
    cold = sc.fista(d, y, 0.1, tol=1e-5, max_iter=20_000)
    warm = sc.fista(d, y, 0.1, tol=1e-5, init=cold.codes)
    assert int(warm.iterations.max()) <= 3
    chex.assert_trees_all_close(warm.codes, cold.codes, atol=1e-4)


def test_fista_fixed_matches_tolerance_variant_and_is_differentiable():
    d, y = _problem(7, batch=2)
    fixed = sc.fista_fixed(d, y, 0.1, 3000)
    tol = sc.fista(d, y, 0.1, tol=1e-5, max_iter=3000)
    chex.assert_trees_all_close(fixed.objective, tol.objective, rtol=1e-5)
    assert fixed.trace.shape == (2, 3000)

    def loss(dic):
        return jnp.sum(sc.fista_fixed(dic, y, 0.1, 50).objective)

    g = jax.grad(loss)(d)
    assert g.shape == d.shape and bool(jnp.all(jnp.isfinite(g)))


def test_omp_matches_sklearn_supports_and_recovers_codes():
    cfg = data.DataConfig(m=64, n=256, k=8, signed=True)
    a = data.make_dictionary(jax.random.key(0), cfg)
    batch = data.sample_batch(jax.random.key(1), a, cfg, 20)
    result = sc.omp(a, batch.y, cfg.k)
    for i in range(20):
        ref = OrthogonalMatchingPursuit(n_nonzero_coefs=cfg.k, fit_intercept=False).fit(
            np.asarray(a, np.float64), np.asarray(batch.y[i], np.float64))
        assert set(np.flatnonzero(ref.coef_)) == set(np.asarray(result.support[i]).tolist())
    chex.assert_trees_all_close(result.codes, batch.z, atol=1e-4)
    assert float(result.residual_norm.max()) < 1e-4


def test_omp_stops_at_tolerance():
    a = jnp.eye(8)
    y = jnp.array([3.0, 0, 0, -2.0, 0, 0, 0, 0])
    result = sc.omp(a, y, 5, tol=1e-6)
    assert int(result.n_selected) == 2
    assert sorted(np.asarray(result.support[:2]).tolist()) == [0, 3]
    assert np.all(np.asarray(result.support[2:]) == -1)
    chex.assert_trees_all_close(result.codes, y)


def test_debias_removes_shrinkage_on_the_true_support():
    cfg = data.DataConfig(m=50, n=120, k=6)
    a = data.make_dictionary(jax.random.key(2), cfg)
    # Amplitudes in [0.5, 1.5]: well above λ, so the Lasso finds the support, but shrunk.
    support = data.sample_support(jax.random.key(3), cfg, 8)
    z = support * jax.random.uniform(jax.random.key(4), support.shape, minval=0.5, maxval=1.5)
    y = z @ a.T
    shrunk = sc.fista(a, y, 0.05, nonneg=True, tol=1e-5, max_iter=20_000)
    assert float(jnp.abs(shrunk.codes - z).max()) > 1e-2  # L1 shrinkage bias
    chex.assert_trees_all_close(sc.debias(a, y, shrunk.codes), z, atol=1e-4)


def _lp_basis_pursuit(d, y, nonneg):
    d, y = np.asarray(d, np.float64), np.asarray(y, np.float64)
    n = d.shape[1]
    if nonneg:
        return linprog(np.ones(n), A_eq=d, b_eq=y, bounds=(0, None), method="highs").x
    x = linprog(np.ones(2 * n), A_eq=np.hstack([d, -d]), b_eq=y, bounds=(0, None),
                method="highs").x
    return x[:n] - x[n:]


@pytest.mark.parametrize("nonneg", [False, True])
def test_basis_pursuit_matches_exact_lp_success(nonneg):
    # Near the phase transition: the ADMM solver succeeds exactly when the LP does.
    m, n, k = 30, 100, 9 if nonneg else 7
    cfg = data.DataConfig(m=m, n=n, k=k, signed=not nonneg)
    agree = 0
    for t in range(20):
        kd, kz = jax.random.split(jax.random.key(100 + t))
        a = data.gaussian_dictionary(kd, m, n)
        z = data.sample_codes(kz, cfg, 1)[0]
        ours = sc.basis_pursuit(a, a @ z, nonneg=nonneg).codes
        lp = _lp_basis_pursuit(a, a @ z, nonneg)
        ok_ours = float(jnp.linalg.norm(ours - z) / jnp.linalg.norm(z)) < 1e-2
        ok_lp = np.linalg.norm(lp - np.asarray(z)) / np.linalg.norm(z) < 1e-2
        agree += ok_ours == ok_lp
    assert agree == 20


@pytest.mark.parametrize(("call", "match"), [
    (lambda d, y: sc.fista(d, y[:, :-1], 0.1), "must equal dictionary rows"),
    (lambda d, y: sc.fista(d, y.at[0, 0].set(jnp.nan), 0.1), "NaN or Inf"),
    (lambda d, y: sc.fista(d, y, -1.0), "lam must lie in"),
    (lambda d, y: sc.fista(d, y, 0.1, max_iter=0), "max_iter must be >= 1"),
    (lambda d, y: sc.fista(d, y, 0.1, init=jnp.zeros((2, 3))), "init must have shape"),
    (lambda d, y: sc.fista(d, y, jnp.ones(3)), "lam must be a scalar or have the batch shape"),
    (lambda d, y: sc.fista(d[None], y, 0.1), "dictionary must have 2 dimensions"),
    (lambda d, y: sc.omp(d, y, 101), "k must be <= dictionary columns"),
    (lambda d, y: sc.omp(d, y, 41), "k must be <= M"),
    (lambda d, y: sc.omp(d, y, 0), "k must be >= 1"),
    (lambda d, y: sc.debias(d, y, jnp.zeros((6, 99))), "codes must have shape"),
    (lambda d, y: sc.basis_pursuit(d[:, :30], y, nonneg=True), "needs M <= N"),
])
def test_bad_input_is_a_clear_error(call, match):
    d, y = _problem(0)
    with pytest.raises(ValueError, match=match):
        call(d, y)


def test_wrong_kind_of_input():
    d, _ = _problem(0)
    with pytest.raises(TypeError, match="y must be a numeric array"):
        sc.fista(d, "abc", 0.1)
    with pytest.raises(TypeError, match="complex"):
        sc.fista(d, jnp.ones(40, jnp.complex64), 0.1)


@pytest.mark.parametrize("nonneg", [False, True])
def test_working_set_fista_reaches_sklearn_objective_float64(nonneg):
    with jax.enable_x64(True):
        cfg = data.DataConfig(m=64, n=256, k=6, signed=not nonneg)
        a = data.make_dictionary(jax.random.key(0), cfg).astype(jnp.float64)
        y = data.sample_batch(jax.random.key(1), a, cfg, 5).y.astype(jnp.float64)
        result = sc.fista_working_set(a, y, 0.02, nonneg=nonneg, working_set=32, tol=1e-9)
    assert bool(result.converged.all())
    for i in range(5):
        ref = _sklearn_objective(a, y[i], 0.02, nonneg)
        assert abs(float(result.objective[i]) - ref) / ref < 1e-8


def test_working_set_fista_matches_plain_fista_and_certifies_float32():
    cfg = data.DataConfig(m=128, n=512, k=10, signed=True)
    a = data.make_dictionary(jax.random.key(2), cfg)
    y = data.sample_batch(jax.random.key(3), a, cfg, 16).y
    ws = sc.fista_working_set(a, y, 0.01, tol=1e-4)
    plain = sc.fista(a, y, 0.01, tol=1e-4, max_iter=20_000)
    assert bool(ws.converged.all()) and bool(plain.converged.all())
    chex.assert_trees_all_close(ws.objective, plain.objective, rtol=1e-4)
    # The reported objective and gap belong to the returned codes.
    chex.assert_trees_all_close(ws.objective, sc.lasso_objective(a, y, ws.codes, 0.01), rtol=1e-5)


def test_working_set_too_small_is_reported_not_hidden():
    # A dense y needs far more than 8 atoms: the solver must say it did not converge.
    a = data.gaussian_dictionary(jax.random.key(4), 32, 128)
    y = jax.random.normal(jax.random.key(5), (3, 32))
    result = sc.fista_working_set(a, y, 0.01, working_set=8, rounds=3)
    assert not bool(result.converged.any())
    assert bool(jnp.all(result.gap > 1e-3 * result.objective))


def test_working_set_bad_input():
    d, y = _problem(0)
    with pytest.raises(ValueError, match="working_set must be >= 1 and <= 100"):
        sc.fista_working_set(d, y, 0.1, working_set=101)
    with pytest.raises(ValueError, match="NaN or Inf"):
        sc.fista_working_set(d, y.at[1, 1].set(jnp.inf), 0.1)
