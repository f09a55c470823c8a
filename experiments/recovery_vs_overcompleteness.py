"""Query-access recovery vs overcompleteness n/d, direction geometry and noise, for every method.

    python experiments/recovery_vs_overcompleteness.py --dims 8,16 --ratios 0.5,1,2,4 --seeds 2
    python experiments/recovery_vs_overcompleteness.py --full      # d ∈ {8,16,32}, all settings

Writes OUT/results.json, OUT/table.csv and OUT/recovery_vs_overcompleteness.png (one panel per
setting: recovery rate at |cos| ≥ 0.99 vs n/d, one line per method and d). Each cell is one
``superjax recover`` run; the command for any row is in its ``config``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import pathlib
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from superjax import recovery, report  # noqa: E402
from superjax.recovery_study import RecoverConfig, run  # noqa: E402

COLUMNS = ("method", "d", "n", "ratio", "directions", "delta", "noise", "seed",
           "recovery_rate_099", "recovery_rate_095", "false_directions", "mean_angle_deg",
           "f_rel_mse", "f_rel_mse_2x", "queries", "seconds")

# Budgets per method and d: what each needs to reach its accuracy (see the README's table).
BUDGET = {"fourier": lambda d: 200_000 if d <= 8 else 400_000,
          "hessian": lambda d: 1_000_000 if d <= 16 else 4 * d * d * 600 + 40_000,
          "hermite": lambda d: 1_000_000, "student": lambda d: 400_000}


def _list(kind):
    return lambda text: tuple(kind(v) for v in text.split(",") if v.strip())


def settings(args) -> list[dict]:
    geometry = [("uniform", 0.3)] + [("clustered", dl) for dl in args.deltas]
    rows = []
    for method, d, ratio, (dirs, delta), noise, seed in itertools.product(
            args.methods, args.dims, args.ratios, geometry, args.noises, range(args.seeds)):
        rows.append(dict(method=method, d=d, n=max(1, int(round(ratio * d))), directions=dirs,
                         delta=delta, noise=noise, seed=seed, budget=BUDGET[method](d)))
    return rows


def plot(rows: list[dict], path: pathlib.Path) -> None:
    panels = sorted({(r["directions"], r["delta"] if r["directions"] == "clustered" else None,
                      r["noise"]) for r in rows}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dirs, delta, noise) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if r["directions"] == dirs and r["noise"] == noise
               and (delta is None or r["delta"] == delta)]
        for method, d in sorted({(r["method"], r["d"]) for r in sel}):
            pts = sorted({r["ratio"] for r in sel if r["method"] == method and r["d"] == d})
            mean = [np.mean([r["recovery_rate_099"] for r in sel if r["method"] == method
                             and r["d"] == d and r["ratio"] == p]) for p in pts]
            ax.plot(pts, mean, marker="o", label=f"{method} d={d}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("n / d")
        ax.set_title(f"{dirs}{'' if delta is None else f' Δ={delta}'} noise {noise}")
    axes[0, 0].set_ylabel("recovery rate (|cos| ≥ 0.99)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", type=_list(str), default=recovery.METHODS)
    p.add_argument("--dims", type=_list(int), default=(8, 16))
    p.add_argument("--ratios", type=_list(float), default=(0.5, 1, 2, 4))
    p.add_argument("--deltas", type=_list(float), default=(), help="clustered settings")
    p.add_argument("--noises", type=_list(float), default=(0.01,))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--full", action="store_true", help="the issue's full grid (long on a CPU)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/recovery"))
    args = p.parse_args(argv)
    if args.full:
        args.dims, args.ratios, args.deltas = (8, 16, 32), (0.5, 1, 2, 4, 8), (0.1, 0.3)
        args.noises, args.seeds = (0.0, 0.01, 0.1), max(args.seeds, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.perf_counter()
    todo = settings(args)
    for i, s in enumerate(todo):
        try:
            rep = run(RecoverConfig(**s))
        except ValueError as err:  # e.g. a budget too small for the method at this d
            print(f"[{i + 1}/{len(todo)}] {s}: skipped: {err}", file=sys.stderr)
            continue
        row = {**s, "ratio": s["n"] / s["d"], **{k: rep[k] for k in COLUMNS if k in rep}}
        rows.append(row)
        eta = (time.perf_counter() - start) / (i + 1) * (len(todo) - i - 1)
        print(f"[{i + 1}/{len(todo)}] {s['method']:8s} d={s['d']:3d} n={s['n']:4d} "
              f"{s['directions']:9s} noise={s['noise']:<5g} rate99={row['recovery_rate_099']:.3f} "
              f"false={row['false_directions']} rel_mse={row['f_rel_mse']:.2e} "
              f"{row['seconds']:.0f}s  ETA {eta / 60:.1f} min", flush=True)
        report.write_json(args.out / "results.json",
                          {"rows": rows, "environment": report.environment()})
    with open(args.out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out / "recovery_vs_overcompleteness.png")
    print(f"wrote {args.out}/results.json, table.csv, recovery_vs_overcompleteness.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
