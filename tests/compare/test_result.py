"""Comparison (compare/result.py): table, CSV, JSON round trip, plot and save."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from plugformer.compare import Comparison, EvalResult, VariantResult


def _comparison() -> Comparison:
    ok = VariantResult(
        index=0, label="attn=dense", spec="transformer_tiny(attn=dense(scale=none))",
        written="transformer_tiny(attn=dense)", kind="encdec", differs={"attn": "dense"},
        params=246592, flops_fwd=130_805_760, flops_fwd_bwd=392_417_280, time_fwd_s=0.0123,
        time_fwd_bwd_s=0.0456, mem_fwd_bytes=876544, mem_fwd_bwd_bytes=5 * 2**20, steps_done=3,
        train_s=1.5, eval_s=0.25, losses=[4.0, 2.0, 1.0],
        evals=[EvalResult(16, 0.1, 0.995, 0.98), EvalResult(32, 2.5, 0.5, 0.0)],
    )
    failed = VariantResult(
        index=1, label="attn=nan_kernel", spec="transformer_tiny(attn=nan_kernel)",
        written="transformer_tiny(attn=nan_kernel)", kind="encdec", differs={"attn": "nan_kernel"},
        status="failed", error="non-finite loss (nan) at step 0", params=246592,
    )
    return Comparison(rows=[ok, failed], task="copy(length=16, vocab=64, eval_lengths=[32])",
                      primary_metric="exact_match", lengths=[16, 32],
                      settings={"steps": 3, "batch": 8, "lr": 0.003, "seed": 0, "device": "cpu"})


def test_json_round_trip(tmp_path):
    comparison = _comparison()
    assert Comparison.from_json(comparison.to_json()) == comparison
    path = tmp_path / "r.json"
    comparison.to_json(path)
    assert Comparison.from_json(path) == comparison
    assert Comparison.from_json(str(path)) == comparison
    assert json.loads(path.read_text())["format"] == "plugformer.comparison/1"


def test_from_json_refuses_other_json():
    with pytest.raises(ValueError, match="not a plugformer comparison"):
        Comparison.from_json('{"rows": []}')


def test_text_table():
    table = _comparison().table()
    lines = table.splitlines()
    assert lines[0].startswith("task: copy(length=16") and "steps 3" in lines[0]
    header = lines[2].split()
    assert header[:3] == ["variant", "params", "FLOPs"] and "EM@16" in header and "EM@32" in header
    dense = next(line for line in lines if line.startswith("attn=dense"))
    assert "246.6k" in dense and "130.8M" in dense and "98.0%" in dense and "0.0%" in dense
    assert "99.5%" in dense  # token accuracy at the training length
    assert "45.60" in dense and "5.0" in dense  # fwd+bwd ms, peak MiB
    assert "- attn=nan_kernel: non-finite loss (nan) at step 0" in table


def test_markdown_table():
    table = _comparison().table("markdown")
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 4 and rows[1].startswith("|---|---:")
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    with pytest.raises(ValueError, match="fmt must be"):
        _comparison().table("html")


def test_csv_has_one_line_per_variant_and_scores_per_length(tmp_path):
    text = _comparison().to_csv(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["label"] for r in rows] == ["attn=dense", "attn=nan_kernel"]
    assert float(rows[0]["exact_match@16"]) == 0.98 and float(rows[0]["loss@32"]) == 2.5
    assert rows[1]["status"] == "failed" and rows[1]["exact_match@16"] == ""
    assert math.isclose(float(rows[0]["final_loss"]), 1.0)


def test_save_writes_every_file(tmp_path):
    paths = _comparison().save(tmp_path / "out" / "deeper")
    assert set(paths) == {"table", "csv", "json", "plot"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["table"].name == "table.md" and paths["plot"].name == "comparison.png"
    assert Comparison.from_json(paths["json"]) == _comparison()


def test_final_loss_and_eval_at():
    row = _comparison().rows[0]
    assert row.final_loss == 1.0
    assert row.eval_at(32).accuracy == 0.5 and row.eval_at(64) is None
    assert _comparison().rows[1].final_loss is None


def test_plot_adds_accuracy_against_length_when_evaluated_at_several_lengths():
    pytest.importorskip("matplotlib")
    from plugformer.compare.plotting import draw

    comparison = _comparison()
    curves, scatter, by_length = draw(comparison).axes
    line, trained = by_length.get_lines()  # the failed variant has no line
    assert line.get_label() == "attn=dense" and list(trained.get_xdata()) == [16, 16]
    assert list(line.get_xdata()) == [16, 32]
    assert list(line.get_ydata()) == pytest.approx([99.5, 50.0])
    assert list(scatter.collections[0].get_offsets()[0]) == pytest.approx([45.6, 98.0])
    comparison.lengths = [16]
    assert len(draw(comparison).axes) == 2
