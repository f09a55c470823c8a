"""The phase-transition study: the logistic fit, the sparsity grid, and the Donoho–Tanner target."""

import math

import numpy as np
import pytest

from superjax import bounds
from superjax import phase_transition as pt


def test_fit_logistic_recovers_known_curve():
    rhos = np.linspace(0.2, 0.6, 12)
    p = 1 / (1 + np.exp((rhos - 0.41) / 0.03))
    trials = np.full(12, 100_000)
    fit = pt.fit_logistic(rhos, np.round(p * trials), trials)
    assert fit["rho50"] == pytest.approx(0.41, abs=2e-4)
    assert fit["width"] == pytest.approx(0.03, rel=0.02)
    assert 0 < fit["rho50_se"] < 1e-3


def test_fit_logistic_not_identified_without_a_crossing():
    fit = pt.fit_logistic([0.1, 0.2, 0.3], [10, 9, 8], [10, 10, 10])
    assert math.isnan(fit["rho50"]) and math.isnan(fit["rho50_se"])


def test_sparsity_grid():
    ks = pt.sparsity_grid(100, 0.3857, 16, 0.6)
    assert ks == sorted(set(ks)) and len(ks) <= 16
    assert ks[0] >= 1 and ks[-1] <= 100
    assert ks[0] <= 0.3857 * 100 <= ks[-1]
    assert pt.sparsity_grid(20, 0.19, 16, 0.6) == list(range(1, 8))  # every integer K when few


@pytest.mark.parametrize("signed", [True, False])
def test_small_study_brackets_the_weak_threshold(signed):
    config = pt.PhaseTransitionConfig(n=80, deltas=(0.5,), trials=40, points=7, signed=signed)
    result = pt.run(config, progress=False)
    row = result["rows"][0]
    assert row["m"] == 40 and row["rho_weak"] == pytest.approx(float(bounds.rho_weak(0.5, signed)))
    rates = np.asarray(row["success_rate"])
    assert rates[0] >= 0.95 and rates[-1] <= 0.05  # the sweep brackets the transition
    # N = 80 has a larger finite-size shift than N = 200, but ρ₅₀ is still near ρ_W.
    assert abs(row["rho50"] - row["rho_weak"]) < 0.08


def test_fista_solver_agrees_with_basis_pursuit():
    common = {"n": 80, "deltas": (0.5,), "trials": 40, "points": 6, "signed": True}
    admm = pt.run(pt.PhaseTransitionConfig(solver="admm", **common), progress=False)["rows"][0]
    fista = pt.run(pt.PhaseTransitionConfig(solver="fista", **common), progress=False)["rows"][0]
    assert abs(admm["rho50"] - fista["rho50"]) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("signed", [True, False])
def test_donoho_tanner_target_at_n200(signed):
    # The target: |ρ₅₀ − ρ_W| ≤ 0.04 at N = 200 for δ ∈ {0.1, 0.25, 0.5}.
    result = pt.run(pt.PhaseTransitionConfig(n=200, trials=100, signed=signed), progress=False)
    for row in result["rows"]:
        assert abs(row["rho50"] - row["rho_weak"]) <= 0.04, row


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"deltas": (0.0,)}, "each delta must lie in"),
    ({"deltas": (1.2,)}, "each delta must lie in"),
    ({"deltas": ()}, "at least one"),
    ({"n": 20, "deltas": (0.05,)}, "need M >= 2"),
    ({"trials": 0}, "trials must be >= 1"),
    ({"solver": "lars"}, "solver must be one of"),
    ({"points": 2}, "points must be >= 3"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.PhaseTransitionConfig(**kwargs)
