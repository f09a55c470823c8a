"""fit(): data parallelism over devices and processes, exact resume after an interruption,
refusal of mismatched or corrupt checkpoints, NaN."""

import dataclasses
import json
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from superjax import checkpoint, data, models, sae_study, train

SAE = models.SAEConfig(d_in=8, d_sae=16, activation="relu")
CFG = train.FitConfig(steps=30, lam=1e-3, learning_rate=3e-3, warmup_steps=5, log_every=5,
                      checkpoint_every=10)
DATA = data.DataConfig(m=8, n=16, k=3)
A = data.make_dictionary(jax.random.key(0), DATA)


def batches(step):
    return data.batch_at(jax.random.key(1), step, A, DATA, 64).y


def test_interrupted_run_resumes_to_exactly_the_same_parameters(tmp_path):
    full = train.fit(SAE, batches, CFG, tmp_path / "full", progress=False)

    def interrupted(step):
        if step == 25:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        train.fit(SAE, interrupted, CFG, tmp_path / "resumed", progress=False)
    resumed = train.fit(SAE, batches, CFG, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 20
    chex.assert_trees_all_equal(resumed.params, full.params)
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]  # records of the lost steps 21–25 were replaced
    assert [r["step"] for r in full.history] == steps


def test_finished_run_is_not_retrained(tmp_path):
    train.fit(SAE, batches, CFG, tmp_path, progress=False)
    again = train.fit(SAE, batches, CFG, tmp_path, progress=False)
    assert again.resumed_from == 30


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    train.fit(SAE, batches, CFG, tmp_path, progress=False)
    other = train.FitConfig(steps=30, lam=1e-2, learning_rate=3e-3, warmup_steps=5, log_every=5,
                            checkpoint_every=10)
    with pytest.raises(checkpoint.CheckpointError, match="lam: saved 0.001 vs now 0.01"):
        train.fit(SAE, batches, other, tmp_path, progress=False)
    wider = models.SAEConfig(d_in=8, d_sae=32, activation="relu")
    with pytest.raises(checkpoint.CheckpointError, match="d_sae"):
        train.fit(wider, batches, CFG, tmp_path, progress=False)


def test_corrupt_checkpoint_is_a_clear_error_and_keeps_the_earlier_one(tmp_path):
    train.fit(SAE, batches, CFG, tmp_path, progress=False)
    latest = tmp_path / "checkpoints" / "30"
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoints/30"):
        train.fit(SAE, batches, CFG, tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "20").is_dir()


def test_divergence_names_the_step_and_writes_no_bad_checkpoint(tmp_path):
    def poisoned(step):
        b = batches(step)
        return b.at[0, 0].set(jnp.inf) if step == 12 else b

    with pytest.raises(FloatingPointError, match="at step 13"):
        train.fit(SAE, poisoned, CFG, tmp_path, progress=False)
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 10


def test_fit_config_validation():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train.FitConfig(steps=0)
    with pytest.raises(ValueError, match="lam must lie in"):
        train.FitConfig(steps=10, lam=-1.0)


def test_fit_is_data_parallel_over_every_device_and_matches_one_device(monkeypatch):
    placed = []
    rows_on = train._rows_on
    monkeypatch.setattr(train, "_rows_on", lambda *a: placed.append(rows_on(*a)) or placed[-1])
    four = train.fit(SAE, batches, CFG, progress=False)  # default: the 4 simulated devices
    assert {len(b.sharding.device_set) for b in placed} == {4}
    assert {b.sharding.spec for b in placed} == {P("data")}
    one = train.fit(SAE, batches, CFG, progress=False, mesh=train.data_mesh(1))
    # The same updates; only the order of the gradient sum differs.
    chex.assert_trees_all_close(four.params, one.params, atol=1e-5)
    for a, b in zip(four.history, one.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert set(four.params["W_dec"].sharding.device_set) == {jax.devices()[0]}


def test_batch_that_cannot_be_split_over_the_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="62 rows cannot be split evenly over 4 devices"):
        train.fit(SAE, lambda s: batches(s)[:62], CFG, progress=False)
    with pytest.raises(ValueError, match=r"must return a \(batch, 8\) array"):
        train.fit(SAE, lambda s: batches(s)[:, :7], CFG, progress=False)
    with pytest.raises(ValueError, match="devices must be >= 1 and <= 4"):
        train.data_mesh(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_same_sae_as_one_process_on_two_devices(tmp_path):
    """`superjax --distributed` (jax.distributed over two CPU processes on localhost, one device
    each) trains what one process does on a two-device mesh; process 0 alone writes the files."""
    args = ["train-sae", "--m", "8", "--n", "16", "--k", "3", "--steps", "30", "--samples",
            "2048", "--batch-size", "64", "--quiet", "--out", str(tmp_path / "two")]
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "superjax.cli", "--distributed", "--coordinator",
         f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    config = sae_study.TrainSAEConfig(m=8, n=16, k=3, steps=30, samples=2048, batch_size=64)
    want = sae_study.run(config, tmp_path / "one", progress=False, mesh=train.data_mesh(2))
    got = json.loads((tmp_path / "two" / "report.json").read_text())
    assert got["environment"]["device_count"] == "2"
    for key in ("latent_mcc", "dict_mean_cos", "fvu", "l0", "final_train_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one writer
    assert (tmp_path / "two" / "saelens" / "sae_weights.safetensors").exists()


def test_a_sweep_trains_each_sae_as_its_own_run_and_resumes_exactly(tmp_path):
    lams, seeds = [1e-3, 3e-2], [0, 1]
    sweep = train.fit(SAE, batches, CFG, tmp_path / "full", progress=False, lams=lams,
                      seeds=seeds)
    assert sweep.params["W_dec"].shape == (2, 16, 8) and len(sweep.history[-1]["loss"]) == 2
    for i, (lam, seed) in enumerate(zip(lams, seeds, strict=True)):
        one = train.fit(SAE, batches, dataclasses.replace(CFG, lam=lam), seed=seed,
                        progress=False)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], sweep.params), one.params,
                                    atol=1e-5)
        assert sweep.history[-1]["l0"][i] == pytest.approx(one.history[-1]["l0"], rel=1e-4)

    def interrupted(step):
        if step == 15:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        train.fit(SAE, interrupted, CFG, tmp_path / "resumed", progress=False, lams=lams,
                  seeds=seeds)
    resumed = train.fit(SAE, batches, CFG, tmp_path / "resumed", progress=False, lams=lams,
                        seeds=seeds)
    assert resumed.resumed_from == 10
    chex.assert_trees_all_equal(resumed.params, sweep.params)
    with pytest.raises(checkpoint.CheckpointError, match="sweep"):
        train.fit(SAE, batches, CFG, tmp_path / "full", progress=False, lams=[1e-3, 0.1],
                  seeds=seeds)


def test_a_k_sweep_trains_each_topk_sae_as_its_own_run():
    """TopK SAEs of different k in one compiled step: each is the run at its own k, and the
    result says which k each stacked SAE has."""
    bound = dataclasses.replace(SAE, activation="topk", k=5, topk_kernel="dense")
    ks, seeds = [2, 5], [0, 1]
    sweep = train.fit(bound, batches, CFG, progress=False, ks=ks, seeds=seeds)
    assert sweep.sweep == {"lams": [CFG.lam] * 2, "seeds": seeds, "ks": ks}
    for i, (k, seed) in enumerate(zip(ks, seeds, strict=True)):
        one = train.fit(dataclasses.replace(bound, k=k), batches, CFG, seed=seed, progress=False)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], sweep.params), one.params,
                                    atol=1e-5)
        assert sweep.history[-1]["l0"][i] == pytest.approx(one.history[-1]["l0"], rel=1e-4)
        assert k - 1 < one.history[-1]["l0"] <= k
    trained = sae_study.unstack(bound, sweep.params, sweep.sweep)
    assert [m.config.k for m in trained] == ks
    with pytest.raises(ValueError, match="ks sweeps the k of TopK"):
        train.fit(SAE, batches, CFG, progress=False, ks=[2, 3])
    with pytest.raises(ValueError, match="ks must be <= the SAE's k = 5"):
        train.fit(bound, batches, CFG, progress=False, ks=[2, 6])
    with pytest.raises(ValueError, match="2 seeds and 3 k values"):
        train.fit(bound, batches, CFG, progress=False, ks=[1, 2, 3], seeds=[0, 1])


def test_sweep_input_errors_and_a_diverging_member_is_named():
    with pytest.raises(ValueError, match="3 λ and 2 seeds"):
        train.fit(SAE, batches, CFG, progress=False, lams=[1e-3, 1e-2, 3e-2], seeds=[0, 1])
    with pytest.raises(ValueError, match="lams must lie in"):
        train.fit(SAE, batches, CFG, progress=False, lams=[1e-3, -1.0])
    with pytest.raises(FloatingPointError, match=r"SAE 1 of the sweep \(λ = 3e\+38"):
        train.fit(SAE, batches, CFG, progress=False, lams=[1e-3, 3e38])
