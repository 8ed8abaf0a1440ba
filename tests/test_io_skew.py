"""Version skew: a checkpoint saved before a part gained an argument still loads; one naming a
part or argument that no longer exists fails naming it (issue 12, item 7)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import plugformer
from plugformer.io import CheckpointError, CheckpointSkewWarning

SPEC = "transformer_tiny(vocab=40, attn=[dense, fused], ffn=relu(d_ff=96))"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return plugformer.build(SPEC).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (2, 6), generator=g), torch.randint(0, 40, (2, 5), generator=g)


def rewrite(path, **changes: str) -> str:
    """Rewrite the checkpoint's metadata (tensors untouched); returns the stored spec before."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    before = metadata["plugformer.spec"]
    metadata.update(changes)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return before


def saved(model, tmp_path):
    return plugformer.save(model, tmp_path / "m.safetensors")


@pytest.mark.parametrize("written, older", [
    ("ffn=relu(d_ff=96, bias=true)", "ffn=relu(d_ff=96)"),  # relu gained `bias` since
    ("fused(scale=none, backend='auto')", "fused(scale=none)"),  # a kernel in a per-layer list
    (", qk_norm=none", ""),  # the model gained `qk_norm`
    ("norm=layernorm(eps=1e-05, bias=true)", "norm=layernorm"),  # a part with no arguments then
])
def test_file_from_before_an_argument_existed_loads_with_equal_outputs(model, tmp_path, written, older):
    path = saved(model, tmp_path)
    spec = rewrite(path)
    assert written in spec
    rewrite(path, **{"plugformer.spec": spec.replace(written, older)})
    loaded = plugformer.load(path)
    assert loaded.spec == model.spec  # the new argument took its default
    src, tgt = batch()
    assert torch.equal(loaded.eval()(src, tgt), model(src, tgt))


def test_file_naming_a_removed_part_fails_naming_it(model, tmp_path):
    path = saved(model, tmp_path)
    spec = rewrite(path)
    rewrite(path, **{"plugformer.spec": spec.replace("dense(scale=none)", "retired_kernel(scale=none)")})
    with pytest.raises(CheckpointError, match=r"attention 'retired_kernel'"):
        plugformer.load(path)


def test_file_naming_a_removed_argument_fails_naming_it(model, tmp_path):
    path = saved(model, tmp_path)
    spec = rewrite(path)
    rewrite(path, **{"plugformer.spec": spec.replace("relu(d_ff=96,", "relu(d_ff=96, gate_scale=2.0,")})
    with pytest.raises(CheckpointError, match=r"argument 'gate_scale' of feedforward 'relu'"):
        plugformer.load(path)
    rewrite(path, **{"plugformer.spec": spec.replace("max_len=256,", "max_len=256, retired_flag=true,")})
    with pytest.raises(CheckpointError, match=r"argument 'retired_flag' of model 'transformer_tiny'"):
        plugformer.load(path)


def test_changed_default_is_reported_by_name_and_the_saved_value_wins(model, tmp_path):
    path = saved(model, tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        defaults = json.loads(handle.metadata()["plugformer.defaults"])
    assert defaults["feedforward:relu"]["bias"] == "true"
    defaults["feedforward:relu"]["bias"] = "false"  # as if relu's default were bias=false then
    rewrite(path, **{"plugformer.defaults": json.dumps(defaults)})
    with pytest.warns(CheckpointSkewWarning, match=r"'bias' of feedforward 'relu' changed from false to true"):
        loaded = plugformer.load(path)
    src, tgt = batch()
    assert torch.equal(loaded.eval()(src, tgt), model(src, tgt))


def test_file_without_recorded_defaults_loads_silently(model, tmp_path):
    """0.1.0 files record no defaults: nothing to compare, nothing to warn about."""
    import warnings

    path = saved(model, tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    del metadata["plugformer.defaults"]
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointSkewWarning)
        plugformer.load(path)
