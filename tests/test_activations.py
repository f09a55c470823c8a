"""Activation files: memory-mapped reading, resumable shuffled stream, scale folding, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from superjax import activations, cli, data, models


@pytest.fixture
def act_file(tmp_path):
    cfg = data.DataConfig(m=8, n=16, k=3)
    a = data.make_dictionary(jax.random.key(0), cfg)
    y = 3.0 * np.asarray(data.sample_batch(jax.random.key(1), a, cfg, 6000).y)
    path = tmp_path / "acts.npy"
    np.save(path, y.astype(np.float32))
    return path, y


def test_stream_is_a_function_of_the_step_and_stays_in_the_training_rows(act_file):
    path, y = act_file
    arr = activations.open_array(path)
    assert isinstance(arr, np.memmap)
    s1 = activations.stream(arr, rows=5000, batch_size=256, chunk=500, buffer_chunks=3)
    s2 = activations.stream(activations.open_array(path), rows=5000, batch_size=256, chunk=500,
                            buffer_chunks=3)
    for step in (0, 7, 40):
        np.testing.assert_array_equal(s1(step), s2(step))
    # One epoch of windows covers every training chunk exactly once, and never held-out rows.
    seen = np.concatenate([s1.window(w * s1.buffer_chunks * s1.chunk // 256)[1]
                           for w in range(4)])
    assert np.array_equal(np.sort(seen), np.arange(5000))
    batch = s1(3) / s1.scale
    dist = np.abs(batch[:, None, :] - y[None, :, :]).max(-1)   # (batch, all rows)
    nearest = dist.argmin(1)
    assert np.all(dist.min(1) < 1e-4) and np.all(nearest < 5000)


def test_scale_gives_mean_norm_sqrt_m(act_file):
    path, y = act_file
    s = activations.stream(activations.open_array(path), rows=5000, batch_size=64)
    assert abs(np.linalg.norm(y[:5000] * s.scale, axis=1).mean() / np.sqrt(8) - 1) < 0.02


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_folded_model_on_raw_input_equals_trained_model_on_scaled_input(activation):
    cfg = models.SAEConfig(d_in=8, d_sae=16, activation=activation,
                           k=3 if activation == "topk" else 0)
    model = models.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    model.b_dec[...] = jnp.linspace(-1, 1, 8)
    x = jax.random.normal(jax.random.key(2), (32, 8))
    scaled = model(2.5 * x)
    activations.fold_scale(model, 2.5)
    raw = model(x)
    np.testing.assert_allclose(raw.codes, scaled.codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw.reconstruction, scaled.reconstruction / 2.5, rtol=1e-5,
                               atol=1e-5)


def test_safetensors_files_are_read(tmp_path):
    y = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    save_file({"acts": y}, str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(activations.open_array(tmp_path / "a.safetensors"), y)


@pytest.mark.parametrize(("payload", "name", "match"), [
    (np.zeros((4, 5, 6), np.float32), "x.npy", "2-D array"),
    (np.zeros((40, 8), np.int32), "x.npy", "floating point"),
    (np.zeros((40, 8), np.float32), "x.csv", "must end in .npy or .safetensors"),
])
def test_bad_files_are_refused(tmp_path, payload, name, match):
    path = tmp_path / name
    np.save(tmp_path / "tmp.npy", payload)
    (tmp_path / "tmp.npy").rename(path)
    with pytest.raises(ValueError, match=match):
        activations.open_array(path)


def test_files_that_are_not_arrays_are_refused(tmp_path):
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match="not a .npy file"):
        activations.open_array(tmp_path / "text.npy")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10" + bytes(7) + b"{not json}")
    with pytest.raises(ValueError, match="cannot read .* as .safetensors"):
        activations.open_array(tmp_path / "junk.safetensors")


def test_check_finite_names_the_row():
    arr = np.zeros((300, 4), np.float32)
    arr[257, 2] = np.inf
    with pytest.raises(ValueError, match="first at row 257"):
        activations.check_finite(arr, chunk=100)


def test_train_sae_on_an_activation_file(act_file, tmp_path, capsys):
    path, y = act_file
    out = tmp_path / "run"
    argv = ["train-sae", "--m", "8", "--n", "16", "--k", "3", "--arch", "topk", "--steps", "300",
            "--batch-size", "256", "--activations", str(path), "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert "latent_mcc" not in rep and rep["test_rows"] == 600
    assert rep["fvu"] < 0.3 and rep["l0"] <= 3.0 + 1e-6
    cfg = json.loads((out / "saelens" / "cfg.json").read_text())
    assert cfg["d_in"] == 8
    assert "fvu=" in capsys.readouterr().out
    # M comes from the file when --m is left out: the same run.
    again = tmp_path / "again"
    argv = [a for a in argv if a not in ("--m", "8")]
    assert cli.main([*argv[:-1], str(again)]) == 0
    assert json.loads((again / "report.json").read_text())["fvu"] == rep["fvu"]


@pytest.mark.parametrize(("change", "match"), [
    ({"--m": "10"}, "does not match the activation file"),
    ({"--arch": "lista"}, "one-layer encoders"),
    ({"--batch-size": "8000"}, "fewer than one batch"),
])
def test_train_sae_activation_bad_input(act_file, tmp_path, capsys, change, match):
    path, _ = act_file
    args = {"--m": "8", "--n": "16", "--k": "3", "--activations": str(path),
            "--out": str(tmp_path / "r"), **change}
    assert cli.main(["train-sae", *[t for kv in args.items() for t in kv]]) == 2
    assert match in capsys.readouterr().err


def test_train_sae_refuses_nan_activations(tmp_path, capsys):
    y = np.ones((3000, 8), np.float32)
    y[1234, 0] = np.nan
    np.save(tmp_path / "bad.npy", y)
    argv = ["train-sae", "--m", "8", "--n", "16", "--k", "3", "--activations",
            str(tmp_path / "bad.npy"), "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    assert "first at row 1234" in capsys.readouterr().err
