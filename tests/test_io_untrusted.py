"""A checkpoint is untrusted input: load checks its tensors against the spec before allocating,
builds without random initialisation, and build refuses a model the machine cannot hold."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import plugformer
from plugformer.io import CheckpointError
from plugformer.registry import materialize
from plugformer.registry.materialize import InsufficientMemoryError, skip_random_init

ROOT = Path(__file__).resolve().parents[1]


def _rewrite(path: Path, out: Path, *, spec=None, edit=None) -> Path:
    """``path``'s tensors (through ``edit``) and metadata (spec replaced) written to ``out``."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    if spec is not None:
        metadata["plugformer.spec"] = spec(metadata["plugformer.spec"])
    save_file(edit(tensors) if edit else tensors, str(out), metadata=metadata)
    return out


@pytest.fixture
def gpt_file(tmp_path):
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny").eval()
    return model, plugformer.save(model, tmp_path / "gpt.safetensors")


def _inflate(spec: str) -> str:
    assert "d_model=64" in spec and "layers=2" in spec
    return spec.replace("d_model=64", "d_model=65536").replace("layers=2", "layers=64")


def test_spec_asking_for_more_than_the_file_holds_fails_fast_under_a_memory_limit(gpt_file, tmp_path):
    _, path = gpt_file
    crafted = _rewrite(path, tmp_path / "crafted.safetensors", spec=_inflate)
    script = textwrap.dedent(f"""
        import resource, time
        import torch, plugformer
        from plugformer.io import CheckpointError
        limit = 2 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        start = time.perf_counter()
        try:
            plugformer.load({str(crafted)!r})
        except CheckpointError as err:
            print("CheckpointError", time.perf_counter() - start)
            print(err)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first, message = done.stdout.split("\n", 1)
    assert first.startswith("CheckpointError")
    assert float(first.split()[1]) < 5.0  # milliseconds on an idle machine; generous for CI
    assert "tensor 'embed.weight' has shape (256, 64) in the file, the model needs (256, 65536)" in message


def test_good_file_outputs_equal_the_saved_models_and_ties_hold(gpt_file):
    model, path = gpt_file
    loaded = plugformer.load(path).eval()
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded(ids), model(ids))
    assert loaded.lm_head.weight is loaded.embed.weight


@pytest.mark.parametrize("spec", ["transformer_tiny", "t5_tiny", "gpt_tiny(pe=alibi)", "llama_tiny"])
def test_non_persistent_buffers_are_computed_as_build_computes_them(spec, tmp_path):
    torch.manual_seed(0)
    model = plugformer.build(spec).eval()
    loaded = plugformer.load(plugformer.save(model, tmp_path / "m.safetensors")).eval()
    for (name, mine), (_, theirs) in zip(model.named_buffers(), loaded.named_buffers()):
        assert torch.equal(mine, theirs), name
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    args = (ids,) if model.kind == "lm" else (ids, ids[:, :5])
    assert torch.equal(loaded(*args), model(*args))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: {k: v for k, v in t.items() if k != "decoder.norm.bias"}, "tensor 'decoder.norm.bias' is missing"),
        (lambda t: {**t, "extra.weight": torch.zeros(2)}, "holds tensor 'extra.weight', which the model lacks"),
        (lambda t: {**t, "decoder.norm.bias": t["decoder.norm.bias"][:10]}, "'decoder.norm.bias' has shape (10,)"),
        (lambda t: {**t, "decoder.norm.bias": t["decoder.norm.bias"].half()}, "'decoder.norm.bias' is F16 in the file"),
    ],
    ids=["missing", "extra", "shape", "dtype"],
)
def test_a_mismatched_file_names_the_first_mismatch(gpt_file, tmp_path, edit, message):
    _, path = gpt_file
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit=edit)
    with pytest.raises(CheckpointError, match="do not fit the model its spec describes") as err:
        plugformer.load(bad)
    assert message in str(err.value)


def test_skip_random_init_skips_random_fills_only() -> None:
    with skip_random_init():
        x = torch.full((1000,), 7.0)
        torch.nn.init.normal_(x)
        torch.nn.init.kaiming_uniform_(x.view(10, 100))
        x.uniform_()
        y = torch.ones(3)
        torch.nn.init.zeros_(y)
    assert torch.equal(x, torch.full((1000,), 7.0))
    assert torch.equal(y, torch.zeros(3))
    z = torch.zeros(1000)
    torch.nn.init.normal_(z)
    assert z.std() > 0.5  # the mode is gone after the block


def test_build_refuses_a_model_larger_than_memory_with_both_numbers(monkeypatch) -> None:
    reference = plugformer.build("gpt_tiny")
    monkeypatch.setattr(materialize, "available_bytes", lambda device: 10_000)
    need = sum(p.numel() * p.element_size() for p in reference.parameters())
    need += sum(b.numel() * b.element_size() for b in reference.buffers())
    with pytest.raises(InsufficientMemoryError) as err:
        plugformer.build("gpt_tiny")
    assert f"({need:,} bytes)" in str(err.value) and "(10,000 bytes)" in str(err.value)


def test_build_of_a_huge_model_fails_before_allocating() -> None:
    start = time.perf_counter()
    with pytest.raises(InsufficientMemoryError, match=r"model 'gpt_tiny' needs \d+\.\d\d GiB"):
        plugformer.build("gpt_tiny(d_model=65536, layers=64)")
    assert time.perf_counter() - start < 10.0


def test_available_bytes_is_the_machines_memory_on_cpu_and_unknown_on_meta() -> None:
    have = materialize.available_bytes("cpu")
    assert have is not None and 2**26 < have <= _physical()
    assert materialize.available_bytes("meta") is None


def _physical() -> int:
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
