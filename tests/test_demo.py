"""The main job, end to end: `superjax demo` writes a report whose numbers come from the run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_sae_study import assert_gap_report


# The main job takes 450–510 s of one CPU, as much as the rest of the default suite on one
# worker: it runs with `make test-all` (and is what `make demo` runs), not with `make test`.
@pytest.mark.slow
def test_demo_writes_report_with_figures_and_results(tmp_path):
    # As a user runs it: a fresh process on the machine's one CPU device (not the 4 simulated
    # devices of the rest of the suite, which only slow the demo down on a 2-core machine).
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    run = subprocess.run([sys.executable, "-m", "superjax", "demo", "--out", str(out), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "Donoho–Tanner" in text and "![phase transition](phase_transition.png)" in text
    assert (out / "phase_transition.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    rows = [r for res in results["phase_transition"] for r in res["rows"]]
    assert len(rows) == 6
    for r in rows:
        # Demo size (50 trials/cell) is noisier than the full study, but still near ρ_W.
        assert abs(r["rho50"] - r["rho_weak"]) < 0.06
        assert f"{r['rho_weak']:.3f}" in text
    assert any(b["recoverable"] is False for b in results["bounds"])
    gap = results["amortisation_gap"]
    assert "## 3. Sparse autoencoders and the amortisation gap" in text
    assert f"{gap['true_dictionary']['lista']['latent_mcc']:.3f}" in text
    assert_gap_report(gap)
    rec = results["recovery"]
    assert "## 4. Query-access recovery" in text and len(rec) == 2
    for r in rec:
        # d = 6, n = 12 (n/d = 2): both methods recover the directions with no false ones.
        assert r["recovery_rate_099"] >= 0.9 and r["false_directions"] == 0, r
        assert r["f_rel_mse"] < 1e-2 and f"{r['f_rel_mse']:.1e}" in text
    net = results["networks"]
    assert "## 5. From networks to features" in text
    full, sup = net["identifiability"]
    assert full["status"] == sup["status"] == "ok"
    # M = N: the representation is linear in the latents; M = N/2: superposition, where linear
    # decoding is capped but the SAE still lifts the latents out.
    # Trained on fresh batches, the classifier nears the cross-entropy optimum, where the theory
    # makes its representation an affine image of the latents.
    assert full["test_ce"] - full["bayes_ce"] < 0.1 and full["linear_r2"] > 0.85
    assert sup["linear_r2"] <= sup["linear_r2_ceiling"] + 0.02
    assert sup["sae_latent_mcc"] > sup["neuron_latent_mcc"] + 0.3
    assert f"{sup['sae_latent_mcc']:.3f}" in text
    # The ReLU SAE's λ is chosen by seed agreement; scored by the truth afterwards, the choice is
    # within 0.02 latent MCC of the best λ in hindsight.
    assert "**λ without ground truth.**" in text
    for rep in (full, sup):
        sel = rep["lam_selection"]
        mcc = sel["latent_mcc"]
        assert mcc[sel["lams"].index(sel["selected_lam"])] >= max(mcc) - 0.02, sel
    digits = net["digits"]
    assert digits["status"] == "ok" and digits["accuracy"] > 0.9
    assert digits["fvu"] < 0.3 and digits["l0"] == digits["config"]["k"]
    assert 0 <= digits["dead_fraction"] < 1
    assert digits["intrusion_accuracy"] > digits["intrusion_chance"]
    # the reconstruction spliced into the network keeps most of what mean ablation loses
    assert digits["clean_accuracy"] == digits["accuracy"]
    assert digits["spliced_ce"] < 0.5 * digits["ablated_ce"]
    assert digits["ce_loss_recovered"] > 0.8 and digits["spliced_accuracy"] > 0.85
    acts = np.load(out / "digits" / "activations.npy")
    assert acts.shape[1] == digits["config"]["neurons"] and np.all(acts >= 0)
    for name in ("feature_density.png", "top_inputs_sae.png", "top_inputs_neurons.png"):
        assert (out / "digits" / name).stat().st_size > 10_000
    assert "![SAE latents](digits/top_inputs_sae.png)" in text
