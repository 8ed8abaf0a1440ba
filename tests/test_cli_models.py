"""The ``plugformer build`` and ``generate`` commands on the real built-in parts."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.cli import main


def test_build_prints_canonical_spec_and_parameters_per_part(capsys):
    assert main(["build", "transformer_tiny(attn=[dense, fused], tie_embeddings=true)"]) == 0
    out = capsys.readouterr().out.splitlines()
    model = plugformer.build("transformer_tiny(attn=[dense, fused], tie_embeddings=true)")
    assert out[0] == str(model.spec)
    total = next(line for line in out if line.startswith("total"))
    assert total.split()[-1] == f"{sum(p.numel() for p in model.parameters()):,}"
    assert any("stack.encoder.layers.*.ffn" in line and " 2 " in line for line in out)


def test_build_error_shows_the_caret(capsys):
    assert main(["build", "transformer_tiny(attn=fussed)"]) == 2
    err = capsys.readouterr().err
    assert "unknown attention 'fussed'" in err and "did you mean 'fused'?" in err
    lines = err.splitlines()
    spec_line = next(i for i, line in enumerate(lines) if "transformer_tiny(attn=fussed)" in line)
    assert lines[spec_line + 1].index("^") == lines[spec_line].index("fussed")


def test_generate_from_a_checkpoint_matches_model_generate(tmp_path, capsys):
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny", vocab=30).eval()
    path = plugformer.save(model, tmp_path / "lm.safetensors")
    assert main(["generate", str(path), "-i", "3,4,5", "-i", "7,8", "-n", "6"]) == 0
    lines = capsys.readouterr().out.split()
    prompt = torch.tensor([[3, 4, 5], [0, 7, 8]])
    padding = torch.tensor([[False] * 3, [True, False, False]])
    expected = model.generate(prompt, 6, prompt_padding_mask=padding)
    assert [list(map(int, line.split(","))) for line in lines] == expected.tolist()


def test_generate_rejects_bad_input(tmp_path, capsys):
    model = plugformer.build("transformer_tiny", vocab=30)
    path = plugformer.save(model, tmp_path / "m.safetensors")
    assert main(["generate", str(path), "-i", "3,x"]) == 2
    assert "comma-separated token ids" in capsys.readouterr().err


def test_routes_draws_every_bra_layer_of_a_spec_or_checkpoint(tmp_path, capsys):
    spec = "gpt_tiny(attn=bra(region=8, topk=2), vocab=40)"
    assert main(["routes", spec, "-L", "50", "-o", str(tmp_path / "spec.png")]) == 0
    assert "routes of 2 bra layers" in capsys.readouterr().out
    assert (tmp_path / "spec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model = plugformer.build("transformer_tiny(attn=bra(region=4, topk=1))", vocab=20)
    path = plugformer.save(model, tmp_path / "encdec.safetensors")
    out = tmp_path / "ckpt.png"
    assert main(["routes", str(path), "-i", "1,2,3,4,5,6,7,8,9", "-o", str(out), "--regions", "2"]) == 0
    assert "routes of 6 bra layers" in capsys.readouterr().out  # enc self, dec self, dec cross x 2
    assert out.exists()


@pytest.mark.parametrize("spec, task, layers", [
    ("transformer_tiny(attn=bra(region=4, topk=1), vocab=70)", "copy(length=12)", 6),
    ("gpt_tiny(attn=bra(region=4, topk=1), vocab=140)", "mqar(pairs=4)", 2),
])
def test_routes_on_examples_of_a_task(tmp_path, capsys, spec, task, layers):
    assert main(["routes", spec, "--task", task, "-o", str(tmp_path / "r.png")]) == 0
    assert f"routes of {layers} bra layers" in capsys.readouterr().out


def test_routes_errors_name_the_problem(tmp_path, capsys):
    assert main(["routes", "transformer_tiny", "-o", str(tmp_path / "x.png")]) == 2
    assert "no bra attention kernel" in capsys.readouterr().err
    assert main(["routes", "gpt_tiny(attn=bra(region=4, topk=1), vocab=10)", "-i", "3,12"]) == 2
    err = capsys.readouterr().err
    assert "token id 12" in err and "vocab is 10" in err
