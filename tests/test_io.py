"""save / load: safetensors with the spec in the metadata, no pickle, clear failures."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

import plugformer
from plugformer.io import CheckpointError, read_metadata


@pytest.fixture
def model():
    torch.manual_seed(0)
    return plugformer.build("transformer_tiny(tie_embeddings=true, attn=[dense, fused])", vocab=40).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (2, 6), generator=g), torch.randint(0, 40, (2, 5), generator=g)


def test_save_then_load_is_bit_identical(model, tmp_path):
    path = plugformer.save(model, tmp_path / "m.safetensors")
    loaded = plugformer.load(path)
    src, tgt = batch()
    assert torch.equal(model(src, tgt), loaded.eval()(src, tgt))
    assert loaded.spec == model.spec
    assert loaded.lm_head.weight is loaded.tgt_embed.weight  # tying survives


def test_file_is_plain_safetensors_with_metadata_and_no_pickle(model, tmp_path):
    path = plugformer.save(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])  # the whole header is JSON
    assert b"\x80\x04" not in raw[:8 + header_len]  # no pickle protocol marker in the header
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta == header["__metadata__"]
    assert meta["plugformer.spec"] == str(model.spec)
    assert meta["plugformer.version"] == plugformer.__version__
    parts = json.loads(meta["plugformer.parts"])
    assert parts["attention:dense"] == "plugformer.plugins.dense"
    assert "model:transformer_tiny" in parts
    assert "lm_head.weight" in keys or "tgt_embed.weight" in keys


def test_load_to_dtype(model, tmp_path):
    path = plugformer.save(model, tmp_path / "m.safetensors")
    loaded = plugformer.load(path, dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64


def test_truncated_file_is_a_clear_error(model, tmp_path):
    path = plugformer.save(model, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or damaged|do not fit"):
        plugformer.load(path)


def test_tampered_weights_are_caught_by_the_checksum(model, tmp_path):
    path = plugformer.save(model, tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        plugformer.load(path)


def test_not_a_plugformer_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a plugformer checkpoint"):
        plugformer.load(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        plugformer.load(tmp_path / "missing.safetensors")


class _IoTestPlugin:
    """A plugin supplying one kernel, installed for one test and then removed."""

    @plugformer.hookimpl
    def plugformer_register(self, registry):
        from plugformer.plugins.dense import DenseAttention

        def mine(ctx) -> DenseAttention:
            """A kernel from a plugin that will be uninstalled."""
            return DenseAttention()

        registry.add("attention", "mine_for_io_test", mine)


def test_missing_plugin_names_kind_name_and_plugin(tmp_path):
    name = plugformer.registry.register_plugin(_IoTestPlugin(), name="io-test-plugin")
    try:
        model = plugformer.build("transformer_tiny(attn=mine_for_io_test)", vocab=20)
        path = plugformer.save(model, tmp_path / "m.safetensors")
    finally:
        plugformer.registry.unregister_plugin(name)
    assert read_metadata(path)["plugformer.parts"]["attention:mine_for_io_test"] == "io-test-plugin"
    with pytest.raises(CheckpointError, match=r"attention 'mine_for_io_test'.*plugin 'io-test-plugin'"):
        plugformer.load(path)


def test_spec_that_now_resolves_differently_is_reported(model, tmp_path):
    """The saved spec is fully explicit, so a changed default cannot alter it; a part that gained
    an argument since (here relu gains ``gated``) loads with that argument's default (issue 12,
    item 7: this used to be refused). A saved value that now converts to something else (relu's
    ``d_ff`` turned float: 256 -> 256.0) makes it resolve differently, and load says so."""
    from plugformer.plugins.feedforward import FeedForwardNetwork, relu
    from plugformer.registry.registry import Registry

    path = plugformer.save(model, tmp_path / "m.safetensors")
    registry = Registry()
    registry.load_plugins()

    def relu_v2(ctx, *, d_ff: int | None = None, bias: bool = True, gated: bool = False) -> FeedForwardNetwork:
        """A newer relu with one more argument."""
        return relu(ctx, d_ff=d_ff, bias=bias)

    registry.add("feedforward", "relu", relu_v2, replace=True)
    loaded = plugformer.load(path, registry=registry)
    assert "gated=false" in str(loaded.spec)
    src, tgt = batch()
    assert torch.equal(loaded.eval()(src, tgt), model(src, tgt))

    def relu_v3(ctx, *, d_ff: float | None = None, bias: bool = True) -> FeedForwardNetwork:
        """A newer relu whose d_ff became a float."""
        return relu(ctx, d_ff=int(d_ff) if d_ff is not None else None, bias=bias)

    registry.add("feedforward", "relu", relu_v3, replace=True)
    with pytest.raises(CheckpointError, match="no longer resolves to the same model") as info:
        plugformer.load(path, registry=registry)
    assert "d_ff=256.0" in str(info.value)


def test_save_records_the_plugins_of_the_registry_it_is_given(tmp_path):
    from plugformer.core.interfaces import AttentionKernel
    from plugformer.plugins.dense import dense
    from plugformer.registry.registry import Registry

    registry = Registry()
    registry.load_plugins()

    class MyPlugin:
        @plugformer.hookimpl
        def plugformer_register(self, registry):
            registry.add("attention", "only_here", dense)

    registry.register_plugin(MyPlugin(), name="private-plugin")
    model = plugformer.build("gpt_tiny(attn=only_here, vocab=20)", registry=registry)
    assert isinstance(model.decoder.layers[0].self_attn.kernel, AttentionKernel)
    with pytest.raises(ValueError, match=r"unknown attention 'only_here'.*registry=\.\.\."):
        plugformer.save(model, tmp_path / "default.safetensors")
    path = plugformer.save(model, tmp_path / "m.safetensors", registry=registry)
    assert read_metadata(path)["plugformer.parts"]["attention:only_here"] == "private-plugin"
    assert torch.equal(plugformer.load(path, registry=registry)(torch.arange(6)[None]), model(torch.arange(6)[None]))


class _ScalarKernelPlugin:
    """A kernel with a 0-dim parameter (a learned temperature), for one test."""

    @plugformer.hookimpl
    def plugformer_register(self, registry):
        from plugformer.plugins.dense import DenseAttention

        class TemperedAttention(DenseAttention):
            def __init__(self) -> None:
                super().__init__()
                self.temperature = torch.nn.Parameter(torch.tensor(1.0))

        def tempered(ctx) -> TemperedAttention:
            """Dense attention with a 0-dim parameter."""
            return TemperedAttention()

        registry.add("attention", "tempered_for_io_test", tempered)


def test_a_0_dim_parameter_round_trips_with_its_checksum(tmp_path):
    name = plugformer.registry.register_plugin(_ScalarKernelPlugin(), name="scalar-io-test-plugin")
    try:
        model = plugformer.build("gpt_tiny(attn=tempered_for_io_test, layers=1, vocab=20)")
        scalars = [key for key, value in model.state_dict().items() if value.dim() == 0]
        assert scalars, "the test needs a 0-dim parameter"
        with torch.no_grad():
            model.get_parameter(scalars[0]).fill_(2.5)
        path = plugformer.save(model, tmp_path / "m.safetensors")
        loaded = plugformer.load(path)
        assert torch.equal(loaded.state_dict()[scalars[0]], torch.tensor(2.5))
        raw = bytearray(path.read_bytes())
        raw[-2] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match="checksum"):
            plugformer.load(path)
    finally:
        plugformer.registry.unregister_plugin(name)
