"""``plugformer export --to hf`` and ``plugformer import``: what Hugging Face's
``AutoModelForCausalLM.from_pretrained`` reads offline gives our logits, and back."""

import pytest
import torch

import plugformer
from plugformer.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("spec", ["llama_tiny", "gpt_tiny(ffn=gelu(d_ff=128, approximate='tanh'))"])
def test_export_loads_in_transformers_and_import_comes_back(spec, tmp_path, capsys):
    torch.manual_seed(0)
    model = plugformer.build(spec).eval()
    checkpoint = plugformer.save(model, tmp_path / "model.safetensors")
    out = tmp_path / "hf"
    assert main(["export", str(checkpoint), "--to", "hf", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)

    back_path = tmp_path / "back.safetensors"
    assert main(["import", str(out), "--out", str(back_path)]) == 0
    back = plugformer.load(back_path)
    expected, got = model.state_dict(), back.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert "written to" in capsys.readouterr().out


def test_export_of_bra_names_bra_and_exits_2(tmp_path, capsys):
    checkpoint = plugformer.save(plugformer.build("gpt_tiny(attn=bra(region=8, topk=2))"), tmp_path / "m.safetensors")
    assert main(["export", str(checkpoint), "--to", "hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "bra(region=8" in err and "has no GPT-2" in err and "Traceback" not in err


def test_export_refuses_a_non_empty_directory_without_force(tmp_path, capsys):
    checkpoint = plugformer.save(plugformer.build("gpt_tiny"), tmp_path / "m.safetensors")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(checkpoint), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(checkpoint), str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "config.json").is_file()


def test_import_of_a_directory_without_config_exits_2(tmp_path, capsys):
    assert main(["import", str(tmp_path), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "import"])
def test_help_shows_examples(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and text.count(f"plugformer {command} ") >= 2
