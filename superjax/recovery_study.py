"""One query-recovery run on a benchmark target: draw it, recover, score, write result.json.

Used by ``superjax recover``, ``experiments/recovery_vs_overcompleteness.py`` and the demo.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

from superjax import _checks, oracle, recovery, report


@dataclasses.dataclass(frozen=True)
class RecoverConfig:
    """A benchmark instance (query-recovery.md §7) and the method that attacks it."""

    d: int = 16
    n: int = 32
    responses: str = "mixed"
    directions: str = "uniform"
    delta: float = 0.3
    noise: float = 0.01
    method: str = "fourier"
    budget: int = 400_000
    degenerate: int = 0
    seed: int = 0
    split: bool = True
    drop: bool = True
    polish: bool = True
    polish_target: float = recovery.POLISH_TARGET
    fit_queries: int | None = None
    angle_bound: bool = False

    def __post_init__(self):
        _checks.positive_int("d", self.d, minimum=2, maximum=4096)
        _checks.positive_int("n", self.n, maximum=100_000)
        _checks.one_of("responses", self.responses, oracle.RESPONSE_MIXES)
        _checks.one_of("directions", self.directions, oracle.DIRECTION_FAMILIES)
        _checks.real_number("delta", self.delta, minimum=0.0, maximum=np.pi / 2, strict_min=True)
        _checks.real_number("noise", self.noise, minimum=0.0)
        _checks.one_of("method", self.method, recovery.METHODS)
        _checks.positive_int("budget", self.budget)
        _checks.positive_int("degenerate", self.degenerate, minimum=0)
        if self.fit_queries is not None:
            _checks.positive_int("fit_queries", self.fit_queries, minimum=1000)
        self.recovery_config()  # validates the budget split

    def recovery_config(self) -> recovery.RecoveryConfig:
        """``fit_queries`` None: a fifth of the budget, at most 40 000 (4·10⁴ at every grid
        budget). At high noise the finishing fit tells a weak feature from noise only with more
        queries: :func:`recovery.drop_redundant` keeps a direction only when the rest of its
        cluster leaves more than about 2(d + k)·noise² / fit_queries of var f unexplained
        without it (d + k: one direction's parameters)."""
        fit = (min(40_000, max(1000, self.budget // 5)) if self.fit_queries is None
               else self.fit_queries)
        return recovery.RecoveryConfig(budget=self.budget, fit_queries=fit, split=self.split,
                                       drop=self.drop, polish=self.polish,
                                       polish_target=self.polish_target)


def run(config: RecoverConfig, out: pathlib.Path | None = None, progress=None) -> dict:
    """Recovers one target; returns (and writes to ``out/result.json``) the scored result."""
    key = jax.random.key(config.seed)
    kt, kn, kr, ks = jax.random.split(key, 4)
    target = oracle.sample_target(kt, config.d, config.n, responses=config.responses,
                                  directions=config.directions, delta=config.delta,
                                  degenerate=config.degenerate)
    orc = oracle.Oracle.from_target(target, noise=config.noise, budget=config.budget, key=kn)
    result = recovery.recover(orc, config.method, kr, config.recovery_config(), progress=progress)
    scores = recovery.score(target, result, ks)
    if config.angle_bound:
        scores.update(_angle_bounds(config, target, orc, result, jax.random.fold_in(ks, 1)))
    rep = {"config": dataclasses.asdict(config), **scores,
           "diagnostics": {k: v for k, v in result.diagnostics.items() if k != "candidates"},
           "candidates": len(result.diagnostics["candidates"]),
           "environment": report.environment()}
    if out is not None:
        report.write_json(pathlib.Path(out) / "result.json", rep)
    return rep


def _angle_bounds(config: RecoverConfig, target, orc: oracle.Oracle, result, key) -> dict:
    """:func:`recovery.angle_bounds` at this run's noise, fit design and budget: per
    non-degenerate true direction (degrees; the matched angles are ``angles_deg``) and as RMS
    over them (against ``rms_angle_deg``)."""
    fit = config.recovery_config().fit_queries
    diag = result.diagnostics
    reused = diag["polish_queries"] - fit if diag.get("polish_accepted") else 0
    bounds = recovery.angle_bounds(target, orc.noise * orc.f_std, key, budget=config.budget,
                                   fit_queries=fit, reused=reused)
    rms = lambda a: float(np.degrees(np.sqrt(np.mean(np.square(a)))))  # noqa: E731
    return {"fit_angle_bound_deg": rms(bounds["fit"]),
            "budget_angle_bound_deg": rms(bounds["budget"]),
            "fit_angle_bounds_deg": np.degrees(bounds["fit"]).tolist(),
            "budget_angle_bounds_deg": np.degrees(bounds["budget"]).tolist()}


#: The fields that identify one run of a grid (everything but the outcome).
SETTING = ("method", "d", "n", "responses", "directions", "delta", "noise", "seed", "budget")


def setting(row: dict, fields: tuple[str, ...] = SETTING) -> tuple:
    """A row's ``fields``; a field missing from a row written before it existed takes its
    :class:`RecoverConfig` default (rows without "responses" ran the mixed targets)."""
    return tuple(row.get(f, getattr(RecoverConfig, f)) for f in fields)


def _groups(rows: list[dict], fields: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(setting(r, fields), []).append(r)
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Seed statistics per setting: mean / min / max recovery rates, false directions, f error."""
    fields = tuple(f for f in SETTING if f != "seed")
    out = []
    for key, sel in sorted(_groups(rows, fields).items(), key=str):
        s = dict(zip(fields, key, strict=True), seeds=len(sel))
        for m in ("recovery_rate_099", "recovery_rate_095", "matched_rate_099",
                  "false_directions", "f_rel_mse", "seconds"):
            if any(m not in r for r in sel):  # a metric newer than some of the rows
                continue
            v = np.asarray([r[m] for r in sel], float)
            s[m] = float(v.mean())
            s[m + "_min"], s[m + "_max"] = float(v.min()), float(v.max())
        out.append(s)
    return out


def queries_to_reach(rows: list[dict], level: float, *, noise: float,
                     responses: str = "mixed") -> list[dict]:
    """Per method and d on uniform directions with ``responses`` at ``noise``: for every n, the
    smallest budget whose seed-mean recovery rate (|cos| ≥ 0.99) reaches ``level`` (None when no
    tried budget does)."""
    sel = [r for r in rows if setting(r, ("directions", "noise", "responses"))
           == ("uniform", noise, responses)]
    out = []
    for (method, d), group in sorted(_groups(sel, ("method", "d")).items()):
        points = []
        for (n,), by_n in sorted(_groups(group, ("n",)).items()):
            budgets = _groups(by_n, ("budget",))
            ok = [b for (b,), rs in budgets.items()
                  if np.mean([r["recovery_rate_099"] for r in rs]) >= level]
            points.append({"n": n, "ratio": n / d, "queries": min(ok) if ok else None,
                           "budgets_tried": sorted(b for (b,) in budgets)})
        out.append({"method": method, "d": d, "level": level, "points": points})
    return out
