"""SAELens round trip: export, import, identical weights and forward pass; clear errors."""

import json

import chex
import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from superjax import export, models


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_round_trip_preserves_weights_and_outputs(tmp_path, activation):
    cfg = models.SAEConfig(d_in=8, d_sae=16, activation=activation,
                           k=3 if activation == "topk" else 0)
    model = models.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    model.b_enc[...] = jax.random.normal(jax.random.key(1), (16,))
    export.export_saelens(model, tmp_path, note="test")
    again = export.import_saelens(tmp_path)
    assert again.config == cfg
    x = jax.random.normal(jax.random.key(2), (32, 8))
    chex.assert_trees_all_equal(again(x), model(x))
    record = json.loads((tmp_path / "cfg.json").read_text())
    assert record["architecture"] == {"relu": "standard"}.get(activation, activation)
    assert record["d_in"] == 8 and record["d_sae"] == 16 and record["metadata"] == {"note": "test"}


def test_imports_an_older_saelens_folder(tmp_path):
    # SAELens < 6 wrote activation_fn_str / activation_fn_kwargs instead of architecture.
    rng = np.random.default_rng(0)
    save_file({"W_enc": rng.normal(size=(4, 6)).astype(np.float32),
               "W_dec": rng.normal(size=(6, 4)).astype(np.float32),
               "b_enc": np.zeros(6, np.float32), "b_dec": np.ones(4, np.float32)},
              str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "d_in": 4, "d_sae": 6, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2},
        "apply_b_dec_to_input": True}))
    model = export.import_saelens(tmp_path)
    assert model.config.activation == "topk" and model.config.k == 2
    assert int((model(np.ones((3, 4), np.float32)).codes != 0).sum(1).max()) <= 2


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="sae_weights.safetensors is missing"):
        export.import_saelens(tmp_path)
    model = models.SparseAutoencoder(models.SAEConfig(8, 16), rngs=nnx.Rngs(0))
    export.export_saelens(model, tmp_path)
    record = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**record, "d_sae": 32}))
    with pytest.raises(ValueError, match="cfg.json implies"):
        export.import_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**record, "architecture": "gated"}))
    with pytest.raises(ValueError, match="unsupported SAELens architecture 'gated'"):
        export.import_saelens(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "cfg.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="cannot read the SAE"):
        export.import_saelens(tmp_path)
    lista = models.SparseAutoencoder(models.SAEConfig(8, 16, encoder="lista"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no counterpart"):
        export.export_saelens(lista, tmp_path / "x")
