"""The command line: JSON output, result files, and one clear line (exit 2) for bad input."""

import importlib.util
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file
from scipy.optimize import linear_sum_assignment

import superjax as sj
from superjax import cli, metrics

REQUIRED_BOUNDS = {"delta", "rho", "rho_weak", "m_min", "recoverable", "welch_bound",
                   "k_log_n_over_k"}


def test_commands_keep_compiled_programs_in_a_cache_directory(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
    monkeypatch.delenv("SUPERJAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_compilation_cache_max_size", -1)
        cli._compilation_cache()  # nothing configured: the user's cache directory, capped
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "superjax" / "xla")
        assert jax.config.jax_compilation_cache_max_size == cli.CACHE_MAX_BYTES
        # JAX enforces the cap with filelock; without it every cache access fails with a warning.
        assert importlib.util.find_spec("filelock") is not None
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
        cli._compilation_cache()  # configured for JAX already (JAX_COMPILATION_CACHE_DIR): kept
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("SUPERJAX_CACHE_DIR", "")
        cli._compilation_cache()  # turned off
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_compilation_cache_max_size", before[1])


def test_bounds_prints_one_json_object(capsys):
    assert cli.main(["bounds", "--m", "64", "--n", "256", "--k", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert REQUIRED_BOUNDS <= set(out)
    assert out["delta"] == 0.25 and out["recoverable"] is True and out["signed"] is False
    assert cli.main(["bounds", "--m", "64", "--n", "256", "--k", "40", "--signed"]) == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["recoverable"] is False and signed["rho_weak"] < out["rho_weak"]


@pytest.mark.parametrize(("argv", "match"), [
    (["bounds", "--m", "64", "--n", "256", "--k", "300"], "k must be <= n"),
    (["bounds", "--m", "0", "--n", "256", "--k", "3"], "m must be >= 1"),
    (["bounds", "--m", "-5", "--n", "256", "--k", "3"], "m must be >= 1"),
    (["bounds", "--m", "300", "--n", "256", "--k", "3"], "m must be <= n"),
    (["phase-transition", "--deltas", "0.1,1.5", "--out", "x"], "each delta must lie in"),
    (["phase-transition", "--solver", "lars", "--out", "x"], "solver must be one of"),
    (["phase-transition", "--trials", "0", "--out", "x"], "trials must be >= 1"),
])
def test_bad_values_exit_2_with_one_line(argv, match, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"superjax {sj.__version__}"


@pytest.mark.parametrize("argv", [
    ["bounds", "--m", "x", "--n", "4", "--k", "1"],
    ["bounds", "--n", "4", "--k", "1"],
    ["phase-transition", "--deltas", "0.1,abc", "--out", "x"],
    ["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--sae-ks", "2.5",
     "--out", "x"],
    ["unknown-command"],
])
def test_malformed_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_console_script_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "superjax.cli", "bounds", "--m", "8", "--n",
                           "16", "--k", "20"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "k must be <= n" in proc.stderr and "Traceback" not in proc.stderr


def test_out_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert cli.main(["phase-transition", "--n", "40", "--out", str(f)]) == 2
    assert "must be a directory" in capsys.readouterr().err


def test_phase_transition_writes_results(tmp_path, capsys):
    out = tmp_path / "pt"
    argv = ["phase-transition", "--n", "40", "--trials", "10", "--deltas", "0.5", "--points",
            "4", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    row = result["rows"][0]
    assert {"delta", "rho50", "rho_weak", "success_rate"} <= set(row)
    assert len(row["success_rate"]) == len(row["rho"]) <= 4
    assert (out / "phase_transition.png").stat().st_size > 10_000
    assert "rho_weak=" in capsys.readouterr().out


def test_train_sae_writes_config_metrics_checkpoints_and_report(tmp_path, capsys):
    out = tmp_path / "sae"
    argv = ["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--steps",
            "200", "--samples", "2048", "--batch-size", "256", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("latent_mcc", "dict_recovery_rate", "dict_mean_cos", "random_dict_mean_cos",
                "fvu", "l0", "dead_fraction"):
        assert key in rep
    assert rep["l0"] <= 3.0 + 1e-6  # TopK with k = K
    assert rep["latent_mcc"] > 3 * rep["latent_mcc_chance"]
    assert (out / "config.json").exists() and (out / "metrics.jsonl").exists()
    assert any((out / "checkpoints").iterdir())
    assert (out / "saelens" / "sae_weights.safetensors").exists()
    assert "latent_mcc=" in capsys.readouterr().out
    # Same command again: resumes from the final checkpoint instead of retraining.
    assert cli.main(argv) == 0
    assert json.loads((out / "report.json").read_text())["resumed_from"] == 200
    # Another configuration in the same directory: refused with a clear message.
    assert cli.main([a if a != "topk" else "relu" for a in argv]) == 2
    assert "another configuration" in capsys.readouterr().err


@pytest.mark.parametrize(("sweep_args", "name", "values", "one_args"), [
    (["--lams", "0.01,0.3"], "lam", (0.01, 0.3), ["--lam", "0.3"]),
    (["--arch", "topk", "--sae-ks", "2,5"], "k", (2, 5), ["--arch", "topk", "--sae-k", "5"]),
])
def test_train_sae_sweep_is_one_run_scored_per_value(sweep_args, name, values, one_args,
                                                     tmp_path, capsys):
    """A λ sweep (L1 SAE) or k sweep (TopK) with restarts: one run, each SAE scored and exported
    as its own, and the seed-agreement choice computed from the exported weights."""
    common = ["train-sae", "--m", "8", "--n", "16", "--k", "3", "--steps", "100", "--samples",
              "2048", "--batch-size", "256", "--quiet"]
    argv = [*common, *sweep_args, "--restarts", "2", "--out", str(tmp_path / "sweep")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"{name}=") == 4
    rep = json.loads((tmp_path / "sweep" / "report.json").read_text())
    sweep = rep["sweep"]
    assert [(m[name], m["seed"]) for m in sweep] == [(v, s) for v in values for s in (0, 1)]
    # A larger L1 penalty gives sparser codes; TopK has at most k active latents.
    assert sweep[0]["l0"] > sweep[2]["l0"] if name == "lam" else all(
        m["l0"] <= m["k"] for m in sweep) and sweep[0]["l0"] < sweep[2]["l0"]
    # Seed agreement per value, recomputed from the exported SAELens weights of the two restarts.
    sel = rep[f"{name}_selection"]
    folders = {v: [tmp_path / "sweep" / "saelens" / f"{name}{v:g}_seed{s}" for s in (0, 1)]
               for v in values}
    atoms = {v: [load_file(str(f / "sae_weights.safetensors"))["W_dec"].T for f in folders[v]]
             for v in values}
    for i, value in enumerate(values):
        assert float(metrics.seed_agreement(atoms[value])) == pytest.approx(
            sel["seed_agreement"][i], abs=1e-5)
        assert float(metrics.reproducible_rate(atoms[value])) == pytest.approx(
            sel["reproducible_rate"][i])
        # The better of the neighbouring values (sorted) finds this share of its atoms.
        near = [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
        assert max(float(metrics.shared_rate(atoms[value], atoms[v])) for v in near) == (
            pytest.approx(sel["neighbour_rate"][i]))
        if name == "k":
            assert json.loads((folders[value][0] / "cfg.json").read_text())["k"] == value
    # The atom rule's count, per atom with scipy's matching: reproduced by the other restart at
    # 0.99 and found by both restarts of the other value (more than half of two) at 0.95.
    def matched(a, b):
        c = np.abs((a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0)))
        rows, cols = linear_sum_assignment(c, maximize=True)
        return c[rows, cols]

    for i, value in enumerate(values):
        other = atoms[values[1 - i]]
        counted = [(matched(a, b) >= 0.99) & np.all([matched(a, o) >= 0.95 for o in other], 0)
                   for a, b in itertools.permutations(atoms[value])]
        assert np.mean(counted) == pytest.approx(sel["confirmed_rate"][i])
    score = sel["seed_agreement"]
    if name == "k":  # weighted by the held-out variance the restarts explain
        explained = [1 - np.mean([m["fvu"] for m in sweep if m["k"] == v]) for v in values]
        score = np.multiply(score, explained)
        np.testing.assert_allclose(sel["score"], score, rtol=1e-6)
    assert sel[f"selected_{name}"] == values[int(np.argmax(score))]
    # The atom rule's choice is printed with its evidence in atoms (16 per dictionary).
    pick, counted = sel[f"selected_{name}_atoms"], "confirmed_rate" if name == "k" else (
        "reproducible_rate")
    assert f"{pick:g} ({16 * sel[counted][values.index(pick)]:.1f} atoms per restart)" in printed
    assert cli.main([*common, *one_args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    for key in ("latent_mcc", "dict_mean_cos", "fvu", "l0", "final_train_loss"):
        assert sweep[2][key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(("argv", "match"), [
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--lams", "0.1,0.2",
      "--out", "x"], "--lams sweeps the L1/L0 coefficient"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--lams", "0.1,-1", "--out", "x"],
     "lams must lie in"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "sparse-coding", "--restarts",
      "2", "--out", "x"], "sparse coding runs one dictionary"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--restarts", "0", "--out", "x"],
     "restarts must be >= 1"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "gelu", "--out", "x"],
     "arch must be one of"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "17", "--out", "x"], "k must be <= n"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--sae-k", "40",
      "--out", "x"], "sae_k must be"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--sae-ks", "2,3", "--out", "x"],
     "--sae-ks sweeps the k of topk and batchtopk"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--sae-ks", "2,3",
      "--sae-k", "3", "--out", "x"], "not both"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--sae-ks", "2,40",
      "--out", "x"], "sae_ks must be"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--known-dictionary", "--latents", "32",
      "--out", "x"], "needs latents = n"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--topk-kernel", "gather", "--out", "x"],
     "is for --arch topk"),
    (["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--topk-kernel",
      "sparse", "--out", "x"], "topk_kernel must be one of"),
    (["train-sae", "--n", "16", "--k", "3", "--out", "x"], "--m is required for synthetic data"),
])
def test_train_sae_bad_input(argv, match, capsys):
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err


def test_recover_writes_the_scored_result(tmp_path, capsys):
    out = tmp_path / "rec"
    argv = ["recover", "--d", "5", "--n", "6", "--method", "hessian", "--budget", "60000",
            "--angle-bound", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    rep = json.loads((out / "result.json").read_text())
    for key in ("recovery_rate_099", "recovery_rate_095", "false_directions", "mean_angle_deg",
                "f_rel_mse", "f_rel_mse_2x", "queries", "seconds"):
        assert key in rep
    assert rep["recovery_rate_099"] == 1.0 and rep["false_directions"] == 0
    fit, every = (np.asarray(rep[k]) for k in ("fit_angle_bounds_deg", "budget_angle_bounds_deg"))
    assert len(fit) == len(rep["angles_deg"]) == 6 and np.all((0 < every) & (every < fit))
    assert rep["queries"] <= 60000
    assert "recovery_rate_099=1" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "match"), [
    (["--method", "magic"], "method must be one of"),
    (["--responses", "gelu"], "responses must be one of"),
    (["--directions", "grid"], "directions must be one of"),
    (["--budget", "1000"], "must exceed fit_queries"),
    (["--fit-queries", "500"], "fit_queries must be >= 1000"),
    (["--budget", "50000", "--fit-queries", "50000"], "must exceed fit_queries"),
    (["--method", "hessian", "--d", "32", "--budget", "100000"], "hessian method needs"),
    (["--n", "0"], "n must be >= 1"),
    (["--noise", "-1"], "noise must lie in"),
    (["--polish-target=-1e-5"], "polish_target must lie in"),
])
def test_recover_bad_input(argv, match, capsys):
    assert cli.main(["recover", *argv, "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
