"""Query-access recovery vs overcompleteness n/d, direction geometry, noise and query budget.

    python experiments/recovery_vs_overcompleteness.py --dims 16 --seeds 2
    python experiments/recovery_vs_overcompleteness.py --full      # the issue's grid; hours on CPU

Four sub-grids, every method, ``--seeds`` seeds each (a row is one ``superjax recover`` run). The
first family in ``--responses`` (default mixed: ReLU, tanh, sin and bump) is the reference:

* overcompleteness: every n/d in ``--ratios`` on uniform directions and on clustered pairs at every
  Δ in ``--deltas``, at the reference noise ``--noise``;
* responses: every further family in ``--responses`` (e.g. relu,tanh,sigmoid,sin,bump,abs: each
  target has only that response) at every n/d, uniform directions, reference noise;
* noise: every level in ``--noises`` at n/d = ``--at-ratio``, uniform directions;
* budget: every multiple in ``--budget-scales`` of each method's budget, at every n/d, uniform
  directions, reference noise: queries to 90 % recovery is the smallest budget whose seed-mean
  recovery rate (|cos| ≥ 0.99) reaches 0.9.

Writes OUT/results.json (rows + summaries), OUT/table.csv, OUT/table.md (seed means) and four
PNGs: recovery vs n/d (one panel per geometry), queries to 90 % vs n/d, recovery vs noise and
recovery vs Δ, and a fifth, recovery vs n/d per response family, when there are several. Runs
resume: rows
already in OUT/results.json are not recomputed, so a grid can be extended a seed at a time;
--collect only tabulates and plots the rows there.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time

import numpy as np

from superjax import oracle, recovery, recovery_study, report
from superjax.plots import _pyplot, _save
from superjax.recovery_study import SETTING, RecoverConfig, queries_to_reach, run, summarise

COLUMNS = SETTING + ("ratio", "recovery_rate_099", "recovery_rate_095", "matched_rate_099",
                     "false_directions", "mean_angle_deg", "rms_angle_deg", "fit_angle_bound_deg",
                     "budget_angle_bound_deg", "f_rel_mse", "f_rel_mse_2x", "queries", "seconds")

# Budgets per method and d: what each needs to reach its accuracy (see the README's table).
BUDGET = {"fourier": lambda d: 200_000 if d <= 8 else 400_000 if d <= 16 else 800_000,
          "hessian": lambda d: 1_000_000 if d <= 16 else 4 * d * d * 600 + 40_000,
          "hermite": lambda d: 1_000_000, "student": lambda d: 400_000}


def _key(row: dict) -> tuple:
    """What identifies a run in results.json (see recovery_study.SETTING)."""
    return recovery_study.setting(row)


def _list(kind):
    return lambda text: tuple(kind(v) for v in text.split(",") if v.strip())


def settings(args) -> list[dict]:
    """The union of the four sub-grids, seed-major (a partial run covers every setting once)."""
    out = {}

    reference = args.responses[0]

    def add(method, d, ratio, directions, delta, noise, seed, scale=1.0, responses=reference):
        s = dict(method=method, d=d, n=max(1, int(round(ratio * d))), responses=responses,
                 directions=directions, delta=delta, noise=noise, seed=seed,
                 budget=int(round(scale * BUDGET[method](d))))
        out.setdefault(_key(s), s)

    geometry = [("uniform", 0.3)] + [("clustered", dl) for dl in args.deltas]
    for seed in range(args.seeds):
        for method in args.methods:
            for d in args.dims:
                for ratio in args.ratios:
                    for dirs, delta in geometry:
                        add(method, d, ratio, dirs, delta, args.noise, seed)
                for noise in args.noises:
                    add(method, d, args.at_ratio, "uniform", 0.3, noise, seed)
                for scale in args.budget_scales:
                    for ratio in args.ratios:
                        add(method, d, ratio, "uniform", 0.3, args.noise, seed, scale)
                for responses in args.responses[1:]:
                    for ratio in args.ratios:
                        add(method, d, ratio, "uniform", 0.3, args.noise, seed,
                            responses=responses)
    return list(out.values())


def _lines(ax, rows, x_of, label_of):
    """Seed means with min–max bars, one colour per label: the best-|cos| rate (solid) and, where
    the rows have it, the one-to-one rate (dashed; it differs when close pairs are merged)."""
    for i, label in enumerate(sorted({label_of(r) for r in rows})):
        for metric, style, suffix in (("recovery_rate_099", "-", ""),
                                      ("matched_rate_099", "--", ", one-to-one")):
            sel = [r for r in rows if label_of(r) == label and metric in r]
            if not sel:
                continue
            xs = sorted({x_of(r) for r in sel})
            vals = [[r[metric] for r in sel if x_of(r) == x] for x in xs]
            mean = np.array([np.mean(v) for v in vals])
            err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, vals, strict=True)]).T
            ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, ls=style, color=f"C{i}",
                        label=label + suffix)
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")


def _log2(ax):
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plots(rows: list[dict], args, out: pathlib.Path) -> list[pathlib.Path]:
    plt = _pyplot()
    label = lambda r: f"{r['method']} d={r['d']}"  # noqa: E731
    at_budget = [r for r in rows if r["budget"] == BUDGET[r["method"]](r["d"])]
    rows = [r for r in rows if r["responses"] == args.responses[0]]
    ref = [r for r in rows if r["noise"] == args.noise and r["budget"] == BUDGET[r["method"]](
        r["d"])]
    paths = []
    # 1. recovery vs n/d, one panel per geometry
    geoms = sorted({(r["directions"], r["delta"] if r["directions"] == "clustered" else None)
                    for r in ref}, key=str)
    fig, axes = plt.subplots(1, len(geoms), figsize=(4.4 * len(geoms), 3.8), squeeze=False)
    for ax, (dirs, delta) in zip(axes[0], geoms, strict=True):
        _lines(ax, [r for r in ref if r["directions"] == dirs
                    and (delta is None or r["delta"] == delta)], lambda r: r["n"] / r["d"], label)
        _log2(ax)
        ax.set(xlabel="n / d", title=f"{dirs}{'' if delta is None else f' Δ={delta}'}"
               f", noise {args.noise}")
    axes[0, 0].set_ylabel("recovery rate (|cos| ≥ 0.99)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, out / "recovery_vs_overcompleteness.png"))
    # 2. queries to 90 % vs n/d (only where a budget sweep ran: more than one budget tried)
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for i, curve in enumerate(queries_to_reach(rows, 0.9, noise=args.noise,
                                               responses=args.responses[0])):
        pts = [p for p in curve["points"] if len(p["budgets_tried"]) > 1]
        if not pts:
            continue
        ax.plot([p["ratio"] for p in pts], [p["queries"] or np.nan for p in pts], "o-",
                color=f"C{i}", label=f"{curve['method']} d={curve['d']}")
        low = [p for p in pts if p["queries"] == p["budgets_tried"][0]]
        ax.plot([p["ratio"] for p in low], [p["queries"] for p in low], "v", color=f"C{i}", ms=11,
                mfc="none")
        never = [p for p in pts if p["queries"] is None]
        ax.plot([p["ratio"] for p in never], [p["budgets_tried"][-1] for p in never], "^",
                color=f"C{i}", ms=11, mfc="none")
    _log2(ax)
    ax.set(yscale="log", xlabel="n / d", ylabel="queries to 90 % recovery",
           title="smallest tried budget with mean recovery ≥ 0.9\n"
                 "▽ the smallest tried (upper bound)   △ none reached it (lower bound)")
    ax.title.set_fontsize(9)
    if ax.lines:
        ax.legend(fontsize=7)
    else:  # a grid without a budget sweep (one --budget-scales value)
        ax.text(0.5, 0.5, "no budget sweep in this grid", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    paths.append(_save(fig, out / "queries_to_90.png"))
    # 3. recovery vs noise, 4. recovery vs Δ (at n/d = at_ratio)
    at = [r for r in rows if abs(r["n"] / r["d"] - args.at_ratio) < 1e-9
          and r["budget"] == BUDGET[r["method"]](r["d"])]
    for name, sel, x_of, xlabel, xscale in (
            ("recovery_vs_noise", [r for r in at if r["directions"] == "uniform"],
             lambda r: max(r["noise"], 1e-3), "oracle noise / std f (0 drawn at 1e-3)", "log"),
            ("recovery_vs_delta", [r for r in at if r["directions"] == "clustered"
                                   and r["noise"] == args.noise],
             lambda r: r["delta"], "pair angle Δ (rad)", "linear")):
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        _lines(ax, sel, x_of, label)
        ax.set(xscale=xscale, xlabel=xlabel, ylabel="recovery rate (|cos| ≥ 0.99)",
               title=f"n/d = {args.at_ratio:g}")
        if sel:
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out / f"{name}.png"))
    # 5. recovery vs n/d per response family (uniform directions, reference noise)
    families = [r for r in at_budget if r["directions"] == "uniform" and r["noise"] == args.noise]
    if len({r["responses"] for r in families}) > 1:
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        _lines(ax, families, lambda r: r["n"] / r["d"],
               lambda r: f"{r['responses']}, {label(r)}")
        _log2(ax)
        ax.set(xlabel="n / d", ylabel="recovery rate (|cos| ≥ 0.99)",
               title=f"one response family per target, uniform, noise {args.noise}")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(_save(fig, out / "recovery_vs_responses.png"))
    return paths


def markdown(settings: list[dict]) -> str:
    """The seed-mean table (min–max over seeds where there are several), for a README."""
    def rng(s, key, fmt):
        lo, hi = s[key + "_min"], s[key + "_max"]
        return fmt.format(s[key]) + ("" if lo == hi else f" ({fmt.format(lo)}–{fmt.format(hi)})")

    header = ["method", "d", "n", "n/d", "responses", "directions", "noise", "budget", "seeds",
              "recovery ≥ 0.99", "≥ 0.95", "one-to-one ≥ 0.99", "false", "f rel. MSE", "s"]
    order = sorted(settings, key=lambda s: (s["method"], s["d"], s["responses"], s["directions"],
                                            s["delta"], s["noise"], s["budget"], s["n"]))
    body = [[s["method"], str(s["d"]), str(s["n"]), f"{s['n'] / s['d']:g}", s["responses"],
             s["directions"] + (f" Δ={s['delta']:g}" if s["directions"] == "clustered" else ""),
             f"{s['noise']:g}", str(s["budget"]), str(s["seeds"]),
             rng(s, "recovery_rate_099", "{:.3f}"), rng(s, "recovery_rate_095", "{:.3f}"),
             rng(s, "matched_rate_099", "{:.3f}") if "matched_rate_099" in s else "–",
             f"{s['false_directions']:g}", rng(s, "f_rel_mse", "{:.1e}"), f"{s['seconds']:.0f}"]
            for s in order]
    return report.markdown_table(header, body) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", type=_list(str), default=recovery.METHODS)
    p.add_argument("--dims", type=_list(int), default=(16,))
    p.add_argument("--ratios", type=_list(float), default=(0.5, 1, 2, 4, 8))
    p.add_argument("--deltas", type=_list(float), default=(0.1, 0.3), help="clustered settings")
    p.add_argument("--noise", type=float, default=0.01, help="reference noise")
    p.add_argument("--noises", type=_list(float), default=(0.0, 0.01, 0.1))
    p.add_argument("--at-ratio", type=float, default=2.0, help="n/d of the noise and Δ sweeps")
    p.add_argument("--budget-scales", type=_list(float), default=(0.25, 0.5, 1.0))
    p.add_argument("--responses", type=_list(str), default=("mixed",),
                   help="response families; the first is the reference of the other sub-grids, "
                        "the others run at every n/d on uniform directions")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--full", action="store_true", help="d ∈ {8, 16, 32}, 3 seeds")
    p.add_argument("--angle-bound", action="store_true",
                   help="record each row's Cramér–Rao angles (superjax recover --angle-bound)")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: tabulate and plot the rows already in OUT/results.json")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/recovery"))
    args = p.parse_args(argv)
    for m in args.methods:
        if m not in recovery.METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(recovery.METHODS)}")
    for r in args.responses:
        if r not in oracle.RESPONSE_MIXES:
            p.error(f"unknown response family {r!r}; choose from "
                    f"{', '.join(oracle.RESPONSE_MIXES)}")
    if not args.responses:
        p.error("--responses needs at least one family")
    if args.full:
        args.dims, args.seeds = (8, 16, 32), max(args.seeds, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    done_path = args.out / "results.json"
    old = json.loads(done_path.read_text())["rows"] if done_path.exists() else []
    for r in old:  # rows from before the responses sub-grid ran the default (mixed) targets
        r["responses"] = recovery_study.setting(r, ("responses",))[0]
    done = {_key(r): r for r in old}
    rows, start = [], time.perf_counter()
    todo = settings(args)
    fresh = [] if args.collect else [s for s in todo if _key(s) not in done]
    print(f"{len(done)} rows in {done_path}" if args.collect else
          f"{len(todo)} settings, {len(todo) - len(fresh)} already in {done_path}", flush=True)
    for i, s in enumerate(fresh):
        try:
            rep = run(RecoverConfig(**s, angle_bound=args.angle_bound))
        except ValueError as err:  # e.g. a budget too small for the method at this d
            print(f"[{i + 1}/{len(fresh)}] {s}: skipped: {err}", file=sys.stderr)
            continue
        row = {**s, "ratio": s["n"] / s["d"], **{k: rep[k] for k in COLUMNS if k in rep}}
        if "rounds" in rep["diagnostics"]:  # Fourier search: how many rounds, why it stopped
            row["search_rounds"] = len(rep["diagnostics"]["rounds"])
            row["search_stop"] = rep["diagnostics"]["stop"]
        for k in ("split_error_before", "split_error_doubled", "split_accepted", "split_added",
                  "dropped", "collapsed", "pairs_split", "converge_rounds", "converged", "pruned",
                  "polish_variance", "polish_queries", "polish_accepted"):
            if k in rep["diagnostics"]:  # the finishing fit's stages
                row[k] = rep["diagnostics"][k]
        done[_key(s)] = row
        eta = (time.perf_counter() - start) / (i + 1) * (len(fresh) - i - 1)
        print(f"[{i + 1}/{len(fresh)}] {s['method']:8s} d={s['d']:3d} n={s['n']:4d} "
              f"{s['responses']:7s} {s['directions']:9s} Δ={s['delta']:<4g} noise={s['noise']:<5g} "
              f"budget={s['budget']:<8d} seed={s['seed']} rate99={row['recovery_rate_099']:.3f} "
              f"false={row['false_directions']} rel_mse={row['f_rel_mse']:.2e} "
              f"{row['seconds']:.0f}s  ETA {eta / 60:.1f} min", flush=True)
        report.write_json(done_path, {"rows": list(done.values()),
                                      "environment": report.environment()})
    rows = list(done.values())
    summary = {"settings": summarise(rows),
               "queries_to_90": queries_to_reach(rows, 0.9, noise=args.noise,
                                                 responses=args.responses[0])}
    report.write_json(done_path, {"rows": rows, "summary": summary,
                                  "environment": report.environment()})
    with open(args.out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (args.out / "table.md").write_text(markdown(summary["settings"]))
    paths = plots(rows, args, args.out)
    print(f"wrote {done_path}, table.csv, table.md, " + ", ".join(p.name for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
