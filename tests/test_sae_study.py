"""The amortisation-gap study: structure of the report, certified optima, the published picture."""

import json

import jax
import numpy as np
import pytest

from superjax import cli, metrics, sae_study


@pytest.mark.slow  # 66 s of one CPU, compiling every encoder; test_demo runs the study too
def test_amortisation_gap_report_structure(tmp_path, capsys):
    out = tmp_path / "gap"
    argv = ["amortisation-gap", "--m", "8", "--n", "16", "--k", "3", "--steps", "150",
            "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    assert_gap_report(json.loads((out / "report.json").read_text()))
    assert "optimal_latent_mcc=" in capsys.readouterr().out


def assert_gap_report(rep: dict) -> None:
    """The amortisation-gap report's structure (also checked on the demo's run, test_demo)."""
    assert set(rep["learned_dictionary"]) == set(sae_study.GAP_ARCHS)
    assert set(rep["true_dictionary"]) == set(sae_study.GAP_ARCHS) - {"sparse-coding"}
    for setting in ("true_dictionary", "learned_dictionary"):
        for row in rep[setting].values():
            # The per-sample optimum is certified, so no encoder can beat it.
            assert row["optimum_certified_fraction"] == 1.0
            assert row["objective_gap"] >= -1e-6
            assert row["encoder_flops_per_sample"] > 0
    assert rep["true_dictionary"]["relu"]["dict_recovery_rate"] == 1.0  # frozen true atoms


@pytest.mark.slow
def test_amortisation_gap_matches_the_published_picture(tmp_path):
    rep = sae_study.amortisation_gap(8, 16, 3, tmp_path, seed=0, steps=2000, progress=False)
    true = rep["true_dictionary"]
    # With the true dictionary per-sample inference is near-perfect, the one-layer encoder is
    # far from it, MLP encoders sit between, and unrolled inference (LISTA) closes most of the gap.
    assert true["relu"]["optimal_latent_mcc"] > 0.95
    assert true["relu"]["latent_mcc"] < true["relu"]["optimal_latent_mcc"] - 0.08
    mlp = true["mlp"]
    assert true["relu"]["latent_mcc"] < mlp["latent_mcc"] < mlp["optimal_latent_mcc"]
    assert true["mlp"]["objective_gap"] < true["relu"]["objective_gap"]
    assert true["lista"]["latent_mcc"] > true["relu"]["latent_mcc"]
    assert true["lista"]["objective_gap"] < true["relu"]["objective_gap"]
    # With learned dictionaries the dictionary, not the encoder, is the bottleneck.
    learned = rep["learned_dictionary"]["relu"]
    assert learned["optimal_latent_mcc"] - learned["latent_mcc"] < 0.05
    assert learned["optimal_latent_mcc"] < true["relu"]["optimal_latent_mcc"] - 0.2


def test_amortisation_gap_bad_input(capsys):
    assert cli.main(["amortisation-gap", "--k", "20", "--out", "x"]) == 2
    assert "k must be <= n" in capsys.readouterr().err


@pytest.mark.slow
def test_sparse_coding_dictionary_learner_beats_the_sae_on_the_dictionary(tmp_path):
    # Per-sample FISTA codes + a learned dictionary (classical dictionary learning) against the
    # one-layer ReLU SAE at the same objective: the amortised encoder costs dictionary quality.
    common = dict(m=16, n=24, k=2, steps=2000, seed=0)
    dl = sae_study.run(sae_study.TrainSAEConfig(arch="sparse-coding", **common),
                       tmp_path / "dl", progress=False)
    sae = sae_study.run(sae_study.TrainSAEConfig(arch="relu", **common), tmp_path / "sae",
                        progress=False)
    assert dl["dict_recovery_rate"] >= 0.9 and dl["latent_mcc"] > 0.95
    assert dl["dict_recovery_rate"] > sae["dict_recovery_rate"] + 0.3
    assert dl["dict_mean_cos"] > dl["random_dict_mean_cos"] + 0.4


@pytest.mark.slow
def test_seed_agreement_selects_the_lambda_that_recovers_the_dictionary(tmp_path):
    # No ground truth enters the choice: restarts at too weak a penalty learn a dense code whose
    # atoms differ from run to run; at λ = 0.3 they agree, and that is where the true atoms are.
    cfg = sae_study.TrainSAEConfig(m=16, n=64, k=3, arch="mlp", steps=3000, lams=(0.03, 0.3),
                                   restarts=2)
    rep = sae_study.run(cfg, tmp_path / "sweep", progress=False)
    sel = rep["lam_selection"]
    assert sel["selected_lam"] == 0.3
    assert sel["seed_agreement"][1] > sel["seed_agreement"][0] + 0.1
    recovered = {lam: min(m["dict_recovery_rate"] for m in rep["sweep"] if m["lam"] == lam)
                 for lam in (0.03, 0.3)}
    assert recovered[0.3] >= 0.9 and recovered[0.3] > recovered[0.03] + 0.5


@pytest.mark.slow
def test_k_selection_finds_the_true_sparsity_of_topk_data(tmp_path):
    # TopK restarts agree most at k = 1 (a vector quantiser's stable cluster centres), which
    # leaves about 30 % of the variance unexplained; weighted by the variance explained, the rule
    # picks the data's K = 3, where the latents are best recovered. No ground truth enters it.
    cfg = sae_study.TrainSAEConfig(m=16, n=32, k=3, arch="topk", steps=3000, sae_ks=(1, 3, 6),
                                   restarts=2)
    rep = sae_study.run(cfg, tmp_path / "sweep", progress=False)
    sel = rep["k_selection"]
    assert int(np.argmax(sel["seed_agreement"])) == 0 and sel["explained_variance"][0] < 0.8
    assert sel["selected_k"] == 3
    mcc = {k: np.mean([m["latent_mcc"] for m in rep["sweep"] if m["k"] == k]) for k in (1, 3, 6)}
    assert mcc[3] == max(mcc.values())


def test_select_by_agreement_picks_the_lambda_whose_restarts_agree():
    # Three λ, two restarts each (λ-major). The second λ's restarts found the same atoms up to
    # order, sign and scale; the others found unrelated ones.
    key = jax.random.key(0)
    a, b, c, d, e = (jax.random.normal(k, (8, 12)) for k in jax.random.split(key, 5))
    same = -3.0 * c[:, ::-1]
    sel = sae_study.select_by_agreement((0.1, 0.3, 1.0), 2, [a, b, c, same, d, e])
    assert sel["selected_lam"] == 0.3 and sel["restarts"] == 2
    assert sel["seed_agreement"][1] == pytest.approx(1.0, abs=1e-6)
    assert sel["seed_agreement"][0] == pytest.approx(
        float(metrics.seed_agreement([a, b])), abs=1e-7) and sel["seed_agreement"][0] < 0.8


def test_k_selection_weights_agreement_by_the_variance_explained():
    # k = 1's restarts agree perfectly but explain half the variance; k = 3's agree at 0.9 and
    # explain it all (FVU 0.02 and 0.04): the score agreement × (1 − mean FVU) picks k = 3.
    key = jax.random.key(1)
    c = jax.random.normal(key, (8, 12))
    near = c + 0.05 * jax.random.normal(jax.random.fold_in(key, 1), c.shape)
    sel = sae_study.select_by_agreement((1, 3), 2, [c, c[:, ::-1], c, near], name="k",
                                        fvu=[0.5, 0.5, 0.02, 0.04])
    agree = float(metrics.seed_agreement([c, near]))
    assert sel["seed_agreement"] == pytest.approx([1.0, agree], abs=1e-6) and agree < 1
    assert sel["explained_variance"] == pytest.approx([0.5, 0.97])
    assert sel["score"] == pytest.approx([0.5, 0.97 * agree], abs=1e-6)
    assert sel["selected_k"] == 3 and sel["ks"] == [1, 3]
    assert sae_study.select_by_agreement((1, 3), 2, [c, c, c, near], name="k")["selected_k"] == 1


def test_the_atom_rule_picks_the_k_whose_restarts_reproduce_the_most_atoms():
    # k = 1's restarts match every atom at |cos| ≈ 0.98: high agreement, nothing reproduced at
    # 0.99. k = 2's restarts share 9 of 12 atoms exactly; the other 3 are unrelated.
    key = jax.random.key(3)
    c, other, noise = (jax.random.normal(k, (32, 12)) for k in jax.random.split(key, 3))
    c = c / np.linalg.norm(c, axis=0)
    rough = c + 0.2 * noise / np.linalg.norm(noise, axis=0)
    part = c.at[:, 9:].set(other[:, 9:])
    sel = sae_study.select_by_agreement((1, 2), 2, [c, rough, c, part], name="k")
    assert sel["seed_agreement"][0] > sel["seed_agreement"][1] and sel["selected_k"] == 1
    assert sel["reproducible_rate"] == pytest.approx([0.0, 0.75])
    assert sel["selected_k_atoms"] == 2
    # Equal rates: the higher agreement × (1 − FVU) decides.
    tie = sae_study.select_by_agreement((1, 2), 2, [c, c, c, c], name="k",
                                        fvu=[0.5, 0.5, 0.1, 0.1])
    assert tie["reproducible_rate"] == [1.0, 1.0] and tie["selected_k_atoms"] == 2


def test_the_atom_rule_counts_only_atoms_that_a_neighbouring_k_finds():
    # TopK's k = 1 quantiser at large K: its restarts reproduce cluster centres q exactly (rate
    # 1), but k = 2 finds only two of them (q0, q1). k = 2's restarts share six of the data's
    # atoms c and those two centres; k = 3's share nine of c. The values come unsorted:
    # neighbours are by value.
    key = jax.random.key(4)
    c, q, *other = (jax.random.normal(k, (32, 12)) for k in jax.random.split(key, 6))
    two = [c.at[:, 6:8].set(q[:, :2]).at[:, 8:].set(o[:, 8:]) for o in other[:2]]
    three = [c.at[:, 9:].set(o[:, 9:]) for o in other[2:]]
    sel = sae_study.select_by_agreement((3, 1, 2), 2, [*three, q, q, *two], name="k")
    assert sel["reproducible_rate"] == pytest.approx([0.75, 1.0, 8 / 12])
    # k = 1 passes a per-value test (k = 2 finds 2 of its 12 atoms), but per atom only q0 and
    # q1 count; of k = 2's eight, all do (c0..c5 by k = 3, q0 and q1 by k = 1).
    assert sel["neighbour_rate"][1] == pytest.approx(2 / 12)
    assert sel["confirmed_rate"] == pytest.approx([6 / 12, 2 / 12, 8 / 12])
    assert sel["selected_k_atoms"] == 2
    # "Most" of a neighbour's restarts: an atom that one of k = 3's two restarts finds does not
    # count. Without c0..c5 in its second restart, k = 3 confirms none of k = 2's c atoms.
    lone = [three[0], three[1].at[:, :6].set(other[0][:, :6])]
    sel = sae_study.select_by_agreement((3, 1, 2), 2, [*lone, q, q, *two], name="k")
    assert sel["confirmed_rate"][2] == pytest.approx(2 / 12)
    # Where no value reproduces atoms that count, agreement × (1 − FVU) decides; a sweep of one
    # value has no neighbour to ask.
    alone = sae_study.select_by_agreement((1, 2), 2, [q, q, c, three[0]], name="k",
                                          fvu=[0.9, 0.9, 0.1, 0.1])
    assert alone["confirmed_rate"] == [0.0, 0.0] and alone["score"][1] > alone["score"][0]
    assert alone["selected_k_atoms"] == 2
    # λ has no quantiser: its reproduced atoms count as they are.
    lam = sae_study.select_by_agreement((0.1, 0.3), 2, [q, q, c, three[0]])
    assert lam["confirmed_rate"] == [0.0, 0.0] and lam["selected_lam_atoms"] == 0.1
    one = sae_study.select_by_agreement((1,), 2, [q, q], name="k")
    assert one["neighbour_rate"] == [1.0] and one["confirmed_rate"] == [1.0]
    assert one["selected_k_atoms"] == 1
    with pytest.raises(ValueError, match="at least two restarts"):
        sae_study.select_by_agreement((1, 2), 1, [q, c], name="k")
    with pytest.raises(ValueError, match="2 values × 2 restarts = 4 dictionaries, got 3"):
        sae_study.select_by_agreement((1, 2), 2, [q, q, c], name="k")
