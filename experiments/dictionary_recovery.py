"""Dictionary recovery vs overcompleteness N/M for SAEs and dictionary learning, and Pareto curves.

For every cell (M, N, K) of the grid and every learner (ReLU-L1 SAE, TopK SAE, MLP-encoder SAE,
sparse coding = FISTA codes + learned dictionary) one `superjax train-sae` run on 2^14 samples,
scored on held-out data: the fraction of true atoms recovered at |cos| ≥ 0.95, latent MCC, FVU
and L0.
Heat maps place each cell at (δ = M/N, ρ = K/M) with the non-negative Donoho–Tanner curve ρ_W(δ)
and the 0.8·ρ_W(δ) margin overlaid, so recovery can be read against what L1 decoding allows. The
Pareto sweep trains ReLU and sparse coding over λ and TopK over k at one cell: FVU vs L0 and
latent MCC vs L0.

    python experiments/dictionary_recovery.py [--ms 8,16,32] [--ratios 1,2,4] [--ks 3,9]
        [--archs relu,topk,mlp,sparse-coding] [--lam mlp=0.3] [--steps 3000]
        [--select-lams 0.1,0.2,0.3,0.5 --restarts 3] [--select-ks 1,2,3,4,6,9,12,18]
        [--pareto-cell 16,32,3] [--collect] [--out runs/dictionary_recovery]

--lam sets the L1 coefficient of the grid's runs: one value for every learner, or arch=value
pairs (the others keep the default 0.1); a run with a λ other than 0.1 lives in its own
directory (e.g. grid/m16_n64_k3/mlp_lam0.3), so several λ coexist under one --out.

--select-lams 0.1,0.2,0.3,0.5 --restarts 3 chooses λ per cell without ground truth instead: the
SAEs with an L1 penalty (relu, mlp) train every λ from 3 initialisations in one run
(grid/.../mlp_select), and the cell reports the seed-0 SAE at the λ whose restarts agree most
(superjax.metrics.seed_agreement), next to the best λ in hindsight (by mean recovery).
--select-ks does the same for the k of TopK and BatchTopK (the values up to N), all k of a cell
in one run (grid/.../topk_select, batchtopk_select), scored by agreement × explained variance
(superjax.sae_study.select_by_agreement). Each cell also records the atom rule's choice, the
value whose restarts reproduce the most atoms at |cos| ≥ 0.99 (superjax.metrics.reproducible_rate),
each counted only where most restarts of a neighbouring value find it at |cos| ≥ 0.95, and the
summary scores both rules against the best in hindsight, by recovery and by latent MCC.

Runs resume: a finished run's report.json is read back, not retrained (a selection made by an
older version is made again from the final checkpoint, superjax.sae_study.reselect); an
interrupted one continues from its last checkpoint. --collect tabulates and plots the finished
runs only.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import time

import numpy as np

from superjax import bounds, models, report, sae_study

LAMS = (0.03, 0.1, 0.3)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _lams(text: str) -> dict[str, float]:
    """"0.3" (every learner) or "mlp=0.3,relu=0.2" → {arch: λ} ("*" stands for every learner)."""
    out = {}
    for part in (v.strip() for v in text.split(",") if v.strip()):
        arch, _, value = part.rpartition("=")
        out[arch or "*"] = float(value)
    return out


def _run(cfg: sae_study.TrainSAEConfig, out: pathlib.Path, collect: bool = False) -> dict | None:
    done = out / "report.json"
    if done.exists():
        rep = json.loads(done.read_text())
        # Fields added to TrainSAEConfig since a report was written take their defaults.
        defaults = dataclasses.asdict(sae_study.TrainSAEConfig(m=cfg.m, n=cfg.n, k=cfg.k))
        saved = {**json.loads(json.dumps(defaults)), **rep.get("config", {})}
        if saved == json.loads(json.dumps(dataclasses.asdict(cfg))):
            # A selection from before the atom rule (or its per-atom neighbour test) is made
            # again from the final checkpoint: nothing is retrained.
            sel = rep.get("k_selection") or rep.get("lam_selection")
            if sel is None or "confirmed_rate" in sel:
                return rep
            return None if collect else sae_study.reselect(cfg, out)
    return None if collect else sae_study.run(cfg, out, progress=False)


def _selected(rep: dict, seed: int) -> tuple[dict, dict]:
    """A selection run's seed-``seed`` SAE at the selected λ (or k), and the row's selection
    fields: the hindsight best by mean recovery and by mean MCC over the restarts, and each
    rule's choice (``selected``; the atom rule's ``selected_atoms``) with its means."""
    name = "k" if "k_selection" in rep else "lam"
    sel, sweep = rep[f"{name}_selection"], rep["sweep"]
    picks = {"": sel[f"selected_{name}"], "_atoms": sel[f"selected_{name}_atoms"]}
    member = next(m for m in sweep if m[name] == picks[""] and m["seed"] == seed)

    def mean(key):
        return {v: float(np.mean([m[key] for m in sweep if m[name] == v]))
                for v in sel[f"{name}s"]}

    mean_rec, mean_mcc = mean("dict_recovery_rate"), mean("latent_mcc")
    best = max(mean_rec, key=mean_rec.get)
    best_mcc = max(mean_mcc, key=mean_mcc.get)
    fields = {"best_in_hindsight": best, "recovery_at_best": mean_rec[best],
              "best_mcc_in_hindsight": best_mcc, "mcc_at_best": mean_mcc[best_mcc]}
    for suffix, value in picks.items():
        fields.update({f"selected{suffix}": value, f"recovery_at_selected{suffix}": mean_rec[value],
                       f"mcc_at_selected{suffix}": mean_mcc[value]})
    return member, fields


def _heat_maps(rows: list[dict], archs: list[str], path: pathlib.Path) -> None:
    from superjax.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.8), squeeze=False)
    grid = np.linspace(0.01, 1.0, 200)
    rho_w = np.asarray(bounds.rho_weak(grid, False))
    for ax, arch in zip(axes[0], archs, strict=True):
        cells = [r for r in rows if r["arch"] == arch]
        has_lam = cells and arch not in models.K_ACTIVATIONS
        lam = f" (λ = {cells[0]['lam']:g})" if has_lam else ""
        sc = ax.scatter([r["delta"] for r in cells], [r["rho"] for r in cells],
                        c=[r["dict_recovery_rate"] for r in cells], cmap="viridis", vmin=0,
                        vmax=1, s=260, marker="s", edgecolors="k")
        for r in cells:
            ax.annotate(f"{r['dict_recovery_rate']:.2f}", (r["delta"], r["rho"]), fontsize=7,
                        ha="center", va="center", color="w")
        ax.plot(grid, rho_w, "k-", lw=1.2, label="ρ_W(δ), non-negative")
        ax.plot(grid, 0.8 * rho_w, "k--", lw=1, label="0.8·ρ_W(δ)")
        ax.set(xscale="log", xlim=(0.05, 1.4), ylim=(0, 1.25), xlabel="δ = M/N",
               ylabel="ρ = K/M", title=f"{arch}{lam}: atoms at |cos| ≥ 0.95")
        ax.legend(fontsize=7, loc="upper left")
    fig.colorbar(sc, ax=axes[0, -1], label="recovery rate")
    fig.tight_layout()
    _save(fig, path)


def _pareto(rows: list[dict], path: pathlib.Path) -> None:
    from superjax.plots import _pyplot, _save

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for arch in sorted({r["arch"] for r in rows}):
        pts = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["l0"])
        l0 = [r["l0"] for r in pts]
        a.plot(l0, [r["fvu"] for r in pts], "o-", label=arch)
        b.plot(l0, [r["latent_mcc"] for r in pts], "o-", label=arch)
    a.set(xlabel="L0 (active latents per sample)", ylabel="FVU", yscale="log",
          title="reconstruction vs sparsity")
    b.set(xlabel="L0", ylabel="latent MCC", title="latent recovery vs sparsity")
    a.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ms", type=_ints, default=[8, 16, 32])
    p.add_argument("--ratios", type=_ints, default=[1, 2, 4], help="N/M values (N <= 128)")
    p.add_argument("--ks", type=_ints, default=[3, 9])
    p.add_argument("--archs", default="relu,topk,mlp,sparse-coding")
    p.add_argument("--lam", type=_lams, default={},
                   help="L1 coefficient: a value, or arch=value pairs (default 0.1)")
    p.add_argument("--select-lams", type=lambda t: tuple(float(v) for v in t.split(",") if v),
                   default=(), help="choose λ per cell by seed agreement among these (relu, mlp)")
    p.add_argument("--select-ks", type=_ints, default=[],
                   help="choose TopK's k per cell by seed agreement among these (those <= N)")
    p.add_argument("--restarts", type=int, default=3,
                   help="initialisations per λ (k) for the choice")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--samples", type=int, default=1 << 14)
    p.add_argument("--pareto-cell", type=_ints, default=[16, 32, 3], help="M,N,K ('' to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--collect", action="store_true",
                   help="train nothing: tabulate and plot the runs that have finished")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/dictionary_recovery"))
    args = p.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    for a in [*archs, *(a for a in args.lam if a != "*")]:
        if a not in sae_study.ARCHS:
            p.error(f"unknown arch {a!r}; choose from {', '.join(sae_study.ARCHS)}")
    default_lam = sae_study.TrainSAEConfig.lam
    start = time.perf_counter()
    rows = []
    cells = [(m, m * r, k) for m in args.ms for r in args.ratios for k in args.ks
             if k <= m and m * r <= 128]
    for i, (m, n, k) in enumerate(cells):
        b = bounds.recovery_bounds(m, n, k, False)
        for arch in archs:
            lam = args.lam.get(arch, args.lam.get("*", default_lam))
            ks = tuple(v for v in args.select_ks if v <= n) if arch in models.K_ACTIVATIONS else ()
            select = bool(ks) or (bool(args.select_lams) and arch in ("relu", "mlp"))
            extra = (dict(sae_ks=ks, restarts=args.restarts) if ks else
                     dict(lams=args.select_lams, restarts=args.restarts) if select
                     else dict(lam=lam))
            cfg = sae_study.TrainSAEConfig(m=m, n=n, k=k, arch=arch, steps=args.steps,
                                           samples=args.samples, seed=args.seed, **extra)
            name = (f"{arch}_select" if select else arch if lam == default_lam
                    else f"{arch}_lam{lam:g}")
            rep = _run(cfg, args.out / "grid" / f"m{m}_n{n}_k{k}" / name, args.collect)
            if rep is None:
                continue
            rep, chosen = _selected(rep, args.seed) if select else (rep, {})
            row = {"m": m, "n": n, "k": k, "arch": arch, "lam": rep.get("lam", lam),
                   "delta": m / n, "rho": k / m, "rho_weak": float(b.rho_weak),
                   "inside_margin": bool(k / m <= 0.8 * b.rho_weak),
                   **{key: rep[key] for key in ("dict_recovery_rate", "dict_mean_cos",
                                                 "latent_mcc", "fvu", "l0", "dead_fraction")},
                   **chosen}
            rows.append(row)
            print(f"[{i + 1}/{len(cells)}] M={m:3d} N={n:4d} K={k} {arch:13s} "
                  f"recovered={row['dict_recovery_rate']:.3f} mcc={row['latent_mcc']:.3f} "
                  f"fvu={row['fvu']:.4f} l0={row['l0']:.2f} "
                  + (f"{'k' if ks else 'λ'}={row['selected']:g} (best in hindsight "
                     f"{row['best_in_hindsight']:g}) " if "selected" in row else "") +
                  f"{'inside' if row['inside_margin'] else 'outside'} 0.8ρ_W "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    pareto = []
    if args.pareto_cell:
        m, n, k = args.pareto_cell
        sweeps = [("relu", {"lam": lam}) for lam in LAMS]
        sweeps += [("sparse-coding", {"lam": lam}) for lam in LAMS]
        sweeps += [("topk", {"sae_k": kk}) for kk in sorted({max(1, k - 1), k, 2 * k})]
        for arch, extra in sweeps:
            cfg = sae_study.TrainSAEConfig(m=m, n=n, k=k, arch=arch, steps=args.steps,
                                           samples=args.samples, seed=args.seed, **extra)
            tag = "_".join(f"{a}{v}" for a, v in extra.items())
            rep = _run(cfg, args.out / "pareto" / f"{arch}_{tag}", args.collect)
            if rep is None:
                continue
            pareto.append({"arch": arch, **extra, **{key: rep[key] for key in (
                "fvu", "l0", "latent_mcc", "dict_recovery_rate")}})
            print(f"pareto {arch:13s} {tag:10s} fvu={rep['fvu']:.4f} l0={rep['l0']:.2f} "
                  f"mcc={rep['latent_mcc']:.3f} recovered={rep['dict_recovery_rate']:.3f}",
                  flush=True)
    if not rows:
        print(f"no finished runs under {args.out}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "results.json", {
        "grid": rows, "pareto": pareto, "args": {k: str(v) if isinstance(v, pathlib.Path) else v
                                                 for k, v in vars(args).items()},
        "seconds": time.perf_counter() - start, "environment": report.environment()})
    with open(args.out / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    _heat_maps(rows, archs, args.out / "heat_maps.png")
    if pareto:
        _pareto(pareto, args.out / "pareto.png")
    inside = [r for r in rows if r["inside_margin"]]
    for arch in archs:
        sel = [r for r in inside if r["arch"] == arch]
        if sel:
            ok = sum(r["dict_recovery_rate"] >= 0.95 for r in sel)
            print(f"{arch:13s}: ≥ 95 % of atoms recovered in {ok}/{len(sel)} cells inside "
                  "0.8·ρ_W(δ)")
        chosen = [r for r in rows if r["arch"] == arch and "selected" in r]
        what = "k" if arch in models.K_ACTIVATIONS else "λ"
        for rule, suffix in (("the selection rule", ""), ("the atom rule", "_atoms")):
            rec = [(r["recovery_at_best"], r[f"recovery_at_selected{suffix}"]) for r in chosen]
            mcc = [(r["mcc_at_best"], r[f"mcc_at_selected{suffix}"]) for r in chosen]
            if rec:
                print(f"{arch:13s}: {rule} chose a {what} as good as the best in hindsight "
                      f"in {sum(got >= best for best, got in rec)}/{len(rec)} cells by recovery "
                      f"(largest mean recovery lost {max(b - g for b, g in rec):.3f}), in "
                      f"{sum(got >= best for best, got in mcc)}/{len(mcc)} by latent MCC "
                      f"(largest loss {max(b - g for b, g in mcc):.3f})")
    print(f"wrote {args.out}/results.json, grid.csv, heat_maps.png"
          + (", pareto.png" if pareto else ""))


if __name__ == "__main__":
    main()
