"""fit(): exact resume after an interruption, refusal of mismatched or corrupt checkpoints, NaN."""

import json

import chex
import jax
import jax.numpy as jnp
import pytest

from superjax import checkpoint, data, models, train

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
