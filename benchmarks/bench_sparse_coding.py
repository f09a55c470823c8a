"""Batched sparse coding: superjax (jit + vmap, tolerance-stopped) against scikit-learn.

Same problems for every solver: a batch of B samples y = D z with K active signed features,
D ∈ R^{M×N} Gaussian with unit atoms, objective ½‖y − Dz‖² + λ‖z‖₁. scikit-learn's SparseCoder
gets ``transform_alpha = λ``, which in its 1/(2·M) scaling is exactly this objective divided by M.
Compile time is measured apart (AOT lower + compile). Every solver's total objective is compared
with the best one found; a Lasso time only counts if its objective is within 1e-4 relative.

    python benchmarks/bench_sparse_coding.py [--batch 4096] [--n 1024] [--m 256] [--k 20]
        [--lam 0.01] [--plain-fista] [--out runs/bench_sparse_coding.json]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings

import jax
import numpy as np

from superjax import data, report, sparse_coding


def _time(fn, repeats):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - start)
    return best, out


def _jax_solver(name, fn, args, repeats):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    seconds, out = _time(lambda: compiled(*args), repeats)
    return {"solver": name, "seconds": seconds, "compile_seconds": compile_s, "out": out}


def _sklearn_solver(name, algorithm, dictionary, y, lam, k, repeats):
    """Best time over n_jobs ∈ {1, all cores} and ``repeats`` runs each: the peer's best case."""
    from sklearn.decomposition import SparseCoder

    best = None
    for n_jobs in (1, -1):
        coder = SparseCoder(dictionary=dictionary.T, transform_algorithm=algorithm,
                            transform_alpha=lam, transform_n_nonzero_coefs=k, n_jobs=n_jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lasso_cd warns per sample about its own tolerance
            seconds, codes = _time(lambda c=coder: c.transform(y), repeats)
        if best is None or seconds < best["seconds"]:
            best = {"solver": name, "seconds": seconds, "compile_seconds": 0.0, "codes": codes,
                    "n_jobs": n_jobs}
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--lam", type=float, default=0.01)
    p.add_argument("--tol", type=float, default=1e-4, help="relative duality gap (superjax)")
    p.add_argument("--working-set", type=int, nargs="+", default=[64, 48],
                   help="working-set sizes to time (default: the solver's default 64, and 48 = "
                        "the 2x-support rule for K = 20)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--plain-fista", action="store_true",
                   help="also time FISTA without working sets (slow on CPU: minutes)")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (e.g. on GPU)")
    p.add_argument("--out", default="runs/bench_sparse_coding.json")
    args = p.parse_args(argv)

    cfg = data.DataConfig(m=args.m, n=args.n, k=args.k, signed=True)
    dictionary = data.make_dictionary(jax.random.key(0), cfg)
    y = data.sample_batch(jax.random.key(1), dictionary, cfg, args.batch).y
    d64, y64 = np.asarray(dictionary, np.float64), np.asarray(y, np.float64)
    env = report.environment()
    print(f"device {env['device']} x{env['device_count']}, jax {env['jax']}, "
          f"{os.cpu_count()} CPU threads; batch {args.batch}, N {args.n}, M {args.m}, "
          f"K {args.k}, lambda {args.lam}")

    lasso = [_jax_solver(
        f"superjax fista_working_set (s={ws})",
        functools.partial(sparse_coding.fista_working_set, lam=args.lam, tol=args.tol,
                          working_set=ws), (dictionary, y), args.repeats)
        for ws in args.working_set]
    if args.plain_fista:
        lasso.append(_jax_solver("superjax fista (no working set)", functools.partial(
            sparse_coding.fista, lam=args.lam, tol=args.tol, max_iter=20_000),
            (dictionary, y), 1))
    omp_rows = [_jax_solver("superjax omp", functools.partial(sparse_coding.omp, k=args.k),
                            (dictionary, y), args.repeats)]
    if not args.no_sklearn:
        import sklearn

        env["sklearn"] = sklearn.__version__
        for algo in ("lasso_lars", "lasso_cd"):
            lasso.append(_sklearn_solver(f"sklearn SparseCoder {algo}", algo, d64, y64,
                                         args.lam, None, 2))
        omp_rows.append(_sklearn_solver("sklearn SparseCoder omp", "omp", d64, y64, None,
                                        args.k, 2))

    for row in lasso:
        codes = np.asarray(row.pop("out").codes, np.float64) if "out" in row else row.pop("codes")
        residual = y64 - codes @ d64.T
        row["objective"] = float(0.5 * np.sum(residual**2) + args.lam * np.abs(codes).sum())
    best = min(r["objective"] for r in lasso)
    for row in lasso:
        row["objective_rel_to_best"] = (row["objective"] - best) / best
        row["equal_objective"] = row["objective_rel_to_best"] <= 1e-4
    for row in omp_rows:
        codes = np.asarray(row.pop("out").codes, np.float64) if "out" in row else row.pop("codes")
        row["residual_norm_sq"] = float(np.sum((y64 - codes @ d64.T) ** 2))
        row["support_sets"] = [frozenset(np.flatnonzero(c)) for c in codes]
    if len(omp_rows) == 2:
        same = np.mean([a == b for a, b in zip(omp_rows[0]["support_sets"],
                                               omp_rows[1]["support_sets"], strict=True)])
        omp_rows[0]["same_support_as_sklearn"] = float(same)
    for row in omp_rows:
        row.pop("support_sets")

    peers = [r for r in lasso if r["solver"].startswith("sklearn") and r["equal_objective"]]
    print(f"\nLasso (batch of {args.batch}):")
    print(f"{'solver':44s} {'seconds':>9s} {'compile':>8s} {'objective':>14s} "
          f"{'rel. to best':>12s}")
    for r in lasso:
        jobs = f"  (n_jobs={r['n_jobs']})" if "n_jobs" in r else ""
        print(f"{r['solver']:44s} {r['seconds']:9.3f} {r['compile_seconds']:8.2f} "
              f"{r['objective']:14.6f} {r['objective_rel_to_best']:12.2e}{jobs}")
    if peers:
        fastest = min(peers, key=lambda r: r["seconds"])
        print(f"\nfastest scikit-learn Lasso at equal objective: {fastest['solver']}")
        for r in lasso:
            if r["solver"].startswith("superjax") and r["equal_objective"]:
                r["speedup_vs_fastest_sklearn"] = fastest["seconds"] / r["seconds"]
                print(f"  speed-up of {r['solver']}: {r['speedup_vs_fastest_sklearn']:.2f}x")
    print(f"\nOMP (K = {args.k}):")
    for r in omp_rows:
        extra = (f"  same support as sklearn: {r['same_support_as_sklearn']:.4f}"
                 if "same_support_as_sklearn" in r else "")
        print(f"{r['solver']:44s} {r['seconds']:9.3f} {r['compile_seconds']:8.2f} "
              f"residual² {r['residual_norm_sq']:.3e}{extra}")
    if len(omp_rows) == 2:
        speedup = omp_rows[1]["seconds"] / omp_rows[0]["seconds"]
        omp_rows[0]["speedup_vs_sklearn"] = speedup
        print(f"speed-up vs scikit-learn OMP: {speedup:.2f}x")
    report.write_json(args.out, {"benchmark": "sparse_coding", "environment": env,
                                 "config": vars(args), "lasso": lasso, "omp": omp_rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
