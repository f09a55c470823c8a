"""The empirical L1 phase transition, measured against the Donoho–Tanner weak threshold.

For each undersampling ratio δ = M/N, sweep the sparsity K (ρ = K/M) around ρ_W(δ); per cell draw
``trials`` fresh Gaussian dictionaries and K-sparse codes, solve the L1 problem, and call a trial a
success when ‖ẑ − z‖₂/‖z‖₂ < 1e-2 after least-squares debiasing on the support (sparse-recovery.md
§1). A logistic fit of success against ρ gives the 50 % point ρ₅₀(δ), to compare with ρ_W(δ).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from superjax import _checks, bounds, data, report, sparse_coding

SOLVERS = ("admm", "fista")


@dataclasses.dataclass(frozen=True)
class PhaseTransitionConfig:
    """One phase-transition study.

    Attributes:
      n: number of features N (≥ 200 for a sharp transition).
      deltas: undersampling ratios δ = M/N in (0, 1).
      trials: trials per (δ, ρ) cell.
      signed: signed codes (cross-polytope curve) or non-negative codes solved with z ≥ 0.
      points: at most this many K values per δ (every integer K in the window if fewer).
      span: the K window is ρ_W(δ)·M·[1 − span, 1 + span].
      solver: "admm" (exact basis pursuit, then debias) or "fista" (Lasso with
        λ = lam_ratio·‖Dᵀy‖_∞, then debias).
      lam_ratio: λ relative to ‖Dᵀy‖_∞ for the FISTA solver.
      success_tol: relative-error threshold for a successful recovery.
      seed: base random seed.
    """

    n: int = 200
    deltas: tuple[float, ...] = (0.1, 0.25, 0.5)
    trials: int = 100
    signed: bool = False
    points: int = 16
    span: float = 0.6
    solver: str = "admm"
    lam_ratio: float = 1e-3
    success_tol: float = 1e-2
    seed: int = 0

    def __post_init__(self):
        _checks.positive_int("n", self.n, minimum=10)
        if not self.deltas:
            raise ValueError("deltas must name at least one undersampling ratio in (0, 1)")
        for d in self.deltas:
            _checks.real_number("each delta", d, minimum=0.0, maximum=1.0, strict_min=True,
                                strict_max=True)
            if round(d * self.n) < 2:
                raise ValueError(f"delta={d} gives M = round(delta*n) = {round(d * self.n)} "
                                 f"measurements at n={self.n}; need M >= 2 (raise n or delta)")
        _checks.positive_int("trials", self.trials)
        _checks.positive_int("points", self.points, minimum=3)
        _checks.real_number("span", self.span, minimum=0.0, maximum=1.0, strict_min=True)
        _checks.one_of("solver", self.solver, SOLVERS)
        _checks.real_number("lam_ratio", self.lam_ratio, minimum=0.0, strict_min=True)
        _checks.real_number("success_tol", self.success_tol, minimum=0.0, strict_min=True)
        _checks.positive_int("seed", self.seed, minimum=0)


def sparsity_grid(m: int, rho_w: float, points: int, span: float) -> list[int]:
    """Integer K values spanning ρ_W·M·[1 − span, 1 + span], clipped to [1, M]."""
    lo = max(1, math.floor(rho_w * m * (1 - span)))
    hi = min(m, math.ceil(rho_w * m * (1 + span)))
    ks = np.unique(np.round(np.linspace(lo, hi, min(points, hi - lo + 1))).astype(int))
    return [int(k) for k in ks]


def fit_logistic(rhos, successes, trials) -> dict[str, float]:
    """Binomial maximum-likelihood fit of P(success | ρ) = 1 / (1 + exp((ρ − ρ₅₀)/w)).

    Returns ρ₅₀, the width w and the standard error of ρ₅₀ (observed Fisher information). When the
    data do not bracket 50 % the fit is not identified and every field is NaN.
    """
    rhos, s, t = (np.asarray(v, dtype=np.float64) for v in (rhos, successes, trials))
    rate = s / t
    if not rate.max() >= 0.5 >= rate.min():
        return {"rho50": math.nan, "width": math.nan, "rho50_se": math.nan}

    def nll(theta):
        p = 1.0 / (1.0 + np.exp(np.clip((rhos - theta[0]) / np.exp(theta[1]), -50, 50)))
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return -np.sum(s * np.log(p) + (t - s) * np.log(1 - p))

    crossing = float(np.interp(0.5, rate[::-1], rhos[::-1])) if np.all(np.diff(rate) <= 0) \
        else float(rhos[np.argmin(np.abs(rate - 0.5))])
    start = np.array([crossing, np.log(max(np.ptp(rhos) / 10, 1e-3))])
    theta = optimize.minimize(nll, start, method="Nelder-Mead",
                              options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000}).x
    # Observed information by central differences.
    h = np.array([1e-4, 1e-3])
    hess = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h[i], np.eye(2)[j] * h[j]
            hess[i, j] = (nll(theta + ei + ej) - nll(theta + ei - ej) - nll(theta - ei + ej)
                          + nll(theta - ei - ej)) / (4 * h[i] * h[j])
    try:
        se = float(np.sqrt(np.linalg.inv(hess)[0, 0]))
    except np.linalg.LinAlgError:
        se = math.nan
    return {"rho50": float(theta[0]), "width": float(np.exp(theta[1])), "rho50_se": se}


def _solver(config: PhaseTransitionConfig) -> Callable:
    nonneg = not config.signed

    def solve(dictionary, y):
        if config.solver == "admm":
            return sparse_coding.basis_pursuit(dictionary, y, nonneg=nonneg).codes
        lam = config.lam_ratio * jnp.max(jnp.abs(dictionary.T @ y))
        codes = sparse_coding.fista(dictionary, y, lam, nonneg=nonneg, max_iter=5000).codes
        return sparse_coding.debias(dictionary, y, codes)

    return solve


def _cell_success(config, m, k, key, solve) -> np.ndarray:
    """Success (bool per trial) of L1 recovery at (M, K), one fresh dictionary per trial."""
    keys = jax.random.split(key, config.trials)
    # K is traced (config.k = 1 is a placeholder): one compiled draw per M, not per cell.
    cfg = data.DataConfig(m=m, n=config.n, k=1, signed=config.signed)
    dicts, codes = _draw(keys, k, cfg)
    return np.asarray(solve(dicts, jnp.einsum("tmn,tn->tm", dicts, codes), codes))


@functools.partial(jax.jit, static_argnames="cfg")
def _draw(keys, k, cfg: data.DataConfig):
    def one(key):
        kd, kz = jax.random.split(key)
        return (data.gaussian_dictionary(kd, cfg.m, cfg.n),
                data.sample_codes(kz, cfg, 1, k=k)[0])

    return jax.vmap(one)(keys)


def run(config: PhaseTransitionConfig, *, progress: bool = True) -> dict[str, Any]:
    """Runs the study; returns a JSON-ready dict (config, per-δ rows, environment, timings)."""
    from tqdm.auto import tqdm

    solve_one = _solver(config)

    @jax.jit
    def solve(dicts, ys, codes):
        est = jax.vmap(solve_one)(dicts, ys)
        err = jnp.linalg.norm(est - codes, axis=-1) / jnp.linalg.norm(codes, axis=-1)
        return err < config.success_tol

    plan = []
    for i, delta in enumerate(config.deltas):
        m = round(delta * config.n)
        rho_w = float(bounds.rho_weak(m / config.n, config.signed))
        plan.append((i, delta, m, rho_w, sparsity_grid(m, rho_w, config.points, config.span)))

    root = jax.random.key(config.seed)
    rows, start = [], time.perf_counter()
    bar = tqdm(total=sum(len(p[-1]) for p in plan), disable=not progress, unit="cell",
               desc=f"phase transition ({'signed' if config.signed else 'non-negative'})")
    for i, delta, m, rho_w, ks in plan:
        successes = []
        for k in ks:
            key = jax.random.fold_in(jax.random.fold_in(root, i), k)
            ok = _cell_success(config, m, k, key, solve)
            successes.append(int(ok.sum()))
            bar.set_postfix(delta=f"{delta:g}", rho=f"{k / m:.3f}",
                            success=f"{ok.mean():.2f}", rho_w=f"{rho_w:.3f}")
            bar.update()
        rhos = [k / m for k in ks]
        fit = fit_logistic(rhos, successes, [config.trials] * len(ks))
        rows.append({
            "delta": m / config.n, "delta_requested": delta, "m": m, "n": config.n,
            "rho_weak": rho_w, **fit, "abs_error": abs(fit["rho50"] - rho_w),
            "k": ks, "rho": rhos, "successes": successes,
            "success_rate": [s / config.trials for s in successes], "trials": config.trials,
        })
    bar.close()
    return {
        "study": "phase_transition",
        "config": dataclasses.asdict(config),
        "rows": rows,
        "max_abs_error": max(r["abs_error"] for r in rows),
        "seconds": time.perf_counter() - start,
        "environment": report.environment(),
    }
