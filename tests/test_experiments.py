"""The experiment scripts end to end on tiny grids: rows, resumption, re-scoring."""

import dataclasses
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from superjax import sae_study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dictionary_recovery_scores_both_k_rules_and_rescores_old_reports(tmp_path, capsys):
    script = _script("dictionary_recovery")
    argv = ["--ms", "8", "--ratios", "1", "--ks", "3", "--archs", "topk", "--select-ks", "1,3",
            "--restarts", "2", "--steps", "60", "--samples", "2048", "--pareto-cell", "",
            "--out", str(tmp_path)]
    script.main(argv)
    out = capsys.readouterr().out
    assert "the selection rule chose a k" in out and "the atom rule chose a k" in out
    (row,) = json.loads((tmp_path / "results.json").read_text())["grid"]
    report_path = tmp_path / "grid" / "m8_n8_k3" / "topk_select" / "report.json"
    rep = json.loads(report_path.read_text())
    sel, sweep = rep["k_selection"], rep["sweep"]
    assert row["selected"] == sel["selected_k"] and row["selected_atoms"] == sel["selected_k_atoms"]
    assert {row["selected"], row["selected_atoms"]} <= {1, 3}
    # The row's recoveries are means over the restarts at each k.
    rec = {k: np.mean([m["dict_recovery_rate"] for m in sweep if m["k"] == k]) for k in (1, 3)}
    assert row["recovery_at_selected_atoms"] == pytest.approx(rec[row["selected_atoms"]])
    assert row["recovery_at_best"] == pytest.approx(max(rec.values()))

    # A report written before the atom rule is scored again from the final checkpoint: nothing
    # is retrained, and every member's scores come back unchanged.
    reproduced, shared = sel.pop("reproducible_rate"), sel.pop("neighbour_rate")
    confirmed = sel.pop("confirmed_rate")
    del sel["selected_k_atoms"], sel["atoms_rule"]
    report_path.write_text(json.dumps(rep))
    log = (report_path.parent / "metrics.jsonl").read_text()
    script.main(argv)
    again = json.loads(report_path.read_text())
    assert (report_path.parent / "metrics.jsonl").read_text() == log
    assert again["resumed_from"] == rep["resumed_from"] and again["sweep"] == sweep
    assert again["k_selection"]["reproducible_rate"] == reproduced
    assert again["k_selection"]["neighbour_rate"] == shared
    assert again["k_selection"]["confirmed_rate"] == confirmed
    assert again["k_selection"]["selected_k_atoms"] == row["selected_atoms"]

    # Re-selection needs the run's final checkpoint and a sweep with restarts.
    cfg = sae_study.TrainSAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in again["config"].items()})
    with pytest.raises(ValueError, match="step 60, not at the run's final step 120"):
        sae_study.reselect(dataclasses.replace(cfg, steps=120), report_path.parent)
    with pytest.raises(ValueError, match="not a sweep with restarts"):
        sae_study.reselect(dataclasses.replace(cfg, restarts=1), report_path.parent)


def test_recovery_grid_adds_a_response_family_subgrid_and_resumes_older_rows(tmp_path, capsys):
    """The grid's bookkeeping (recovery itself is tested in test_recovery): which settings run,
    which resume, and how rows written before the responses field was added are read."""
    script = _script("recovery_vs_overcompleteness")
    calls = []

    def fake_run(cfg):  # a stand-in recovery: its rate tells the families apart
        calls.append(cfg)
        rate = {"mixed": 1.0, "relu": 0.5, "abs": 0.25}[cfg.responses]
        return {"recovery_rate_099": rate, "recovery_rate_095": rate, "matched_rate_099": rate,
                "false_directions": 0, "mean_angle_deg": 0.1, "f_rel_mse": 1e-4,
                "f_rel_mse_2x": 2e-4, "queries": cfg.budget, "seconds": 1.0, "diagnostics": {}}

    script.run = fake_run
    argv = ["--methods", "fourier", "--dims", "8", "--ratios", "1,2", "--deltas", "0.3",
            "--noises", "0.01", "--budget-scales", "1", "--seeds", "1", "--out", str(tmp_path)]
    script.main(argv)
    first = {(c.responses, c.directions, c.n) for c in calls}
    assert first == {("mixed", g, n) for g in ("uniform", "clustered") for n in (8, 16)}
    # Rows from before the field existed ran the mixed targets: they are not run again.
    results = tmp_path / "results.json"
    data = json.loads(results.read_text())
    for row in data["rows"]:
        del row["responses"]
    results.write_text(json.dumps(data))
    calls.clear()
    script.main(argv + ["--responses", "mixed,relu,abs"])
    assert sorted((c.responses, c.n) for c in calls) == [
        ("abs", 8), ("abs", 16), ("relu", 8), ("relu", 16)]
    assert all(c.directions == "uniform" and c.noise == 0.01 for c in calls)
    rows = json.loads(results.read_text())["rows"]
    assert len(rows) == 8 and {r["responses"] for r in rows} == {"mixed", "relu", "abs"}
    table = (tmp_path / "table.md").read_text()
    assert "| relu | uniform |" in table and "| abs | uniform |" in table
    assert (tmp_path / "recovery_vs_responses.png").stat().st_size > 0
    # The budget curve and the geometry panels use the reference family only.
    (curve,) = json.loads(results.read_text())["summary"]["queries_to_90"]
    assert [p["queries"] for p in curve["points"]] == [200_000, 200_000]  # mixed: rate 1
    with pytest.raises(SystemExit):
        script.main(argv + ["--responses", "mixed,cosine"])
    assert "unknown response family 'cosine'" in capsys.readouterr().err
