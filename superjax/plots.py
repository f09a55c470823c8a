"""PNG figures for the studies (matplotlib, imported lazily, Agg backend)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def phase_transition(results: list[dict[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
    """Success map over (δ, ρ) with the Donoho–Tanner curve, and success-vs-ρ curves per δ.

    ``results`` holds one phase-transition result dict per code type (signed / non-negative).
    """
    from superjax import bounds

    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False)
    grid = np.linspace(0.005, 0.995, 199)
    for (ax_map, ax_curve), res in zip(axes, results, strict=True):
        signed = res["config"]["signed"]
        kind = "signed" if signed else "non-negative"
        rho_w = np.asarray(bounds.rho_weak(grid, signed))
        for row in res["rows"]:
            width = 0.6 * min(0.08, 0.5 / max(1, len(res["rows"])))
            rhos = np.asarray(row["rho"])
            heights = np.gradient(rhos) if len(rhos) > 1 else np.array([0.02])
            ax_map.bar(np.full_like(rhos, row["delta"]), heights, width=width,
                       bottom=rhos - heights / 2,
                       color=plt.cm.viridis(np.asarray(row["success_rate"])), edgecolor="none")
            if row["rho50"] is not None and np.isfinite(row["rho50"] or np.nan):
                ax_map.errorbar(row["delta"], row["rho50"], yerr=row.get("rho50_se") or 0,
                                fmt="o", color="red", ms=4, capsize=3)
        ax_map.plot(grid, rho_w, "k-", lw=1.5, label=f"Donoho–Tanner ρ_W(δ), {kind}")
        ax_map.plot([], [], "o", color="red", label="empirical ρ₅₀ (logistic fit)")
        ax_map.set(xlim=(0, 1), ylim=(0, 1), xlabel="δ = M/N", ylabel="ρ = K/M",
                   title=f"L1 recovery, {kind} codes, N = {res['config']['n']}, "
                         f"{res['config']['trials']} trials/cell")
        ax_map.legend(loc="upper left", fontsize=8)
        sm = plt.cm.ScalarMappable(cmap="viridis")
        fig.colorbar(sm, ax=ax_map, label="success rate")
        colors = plt.cm.plasma(np.linspace(0.0, 0.9, len(res["rows"])))
        for color, row in zip(colors, res["rows"], strict=True):
            rhos = np.asarray(row["rho"])
            ax_curve.plot(rhos, row["success_rate"], "o", color=color,
                          label=f"δ = {row['delta']:.2f}")
            if row["rho50"] is not None and np.isfinite(row["rho50"] or np.nan):
                x = np.linspace(rhos.min(), rhos.max(), 200)
                ax_curve.plot(x, 1 / (1 + np.exp((x - row["rho50"]) / row["width"])), "-",
                              color=color, lw=1)
            ax_curve.axvline(row["rho_weak"], color=color, ls="--", lw=1)
        ax_curve.set(xlabel="ρ = K/M", ylabel="success rate", ylim=(-0.03, 1.03),
                     title="success vs ρ (dashed: ρ_W(δ); line: logistic fit)")
        ax_curve.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def feature_density(densities: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    """Histogram of log10 firing frequency per unit, one series per name (dead units at left)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    floor = -6.0
    bins = np.linspace(floor - 0.25, 0.0, 26)
    for name, dens in densities.items():
        dens = np.asarray(dens, np.float64)
        logd = np.where(dens > 0, np.log10(np.maximum(dens, 1e-300)), floor)
        dead = int(np.sum(dens == 0))
        ax.hist(np.maximum(logd, floor), bins=bins, alpha=0.6,
                label=f"{name} ({len(dens)} units, {dead} dead)")
    ax.set(xlabel=f"log10 firing frequency (dead units at {floor:g})", ylabel="units",
           title="feature density on held-out samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def top_inputs(images, activations, units, path: str | pathlib.Path, title: str,
               per_unit: int = 8) -> pathlib.Path:
    """One row per unit: its ``per_unit`` top-activating images (those with activation > 0), with
    the activation above each."""
    plt = _pyplot()
    images, activations = np.asarray(images), np.asarray(activations)
    units = list(np.asarray(units).ravel())
    rows = max(1, len(units))
    fig, axes = plt.subplots(rows, per_unit, figsize=(1.1 * per_unit, 1.25 * rows + 0.5),
                             squeeze=False)
    for row, unit in zip(axes, units + [None] * (rows - len(units)), strict=True):
        top = [] if unit is None else [
            i for i in np.argsort(-activations[:, unit])[:per_unit] if activations[i, unit] > 0]
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(top):
                ax.imshow(images[top[j]], cmap="gray_r")
                ax.set_title(f"{activations[top[j], unit]:.2f}", fontsize=7)
        if unit is not None:
            row[0].set_ylabel(f"#{unit}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
