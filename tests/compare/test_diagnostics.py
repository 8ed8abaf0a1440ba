"""Plugins' diagnostics of a trained model become comparison columns (the
``plugformer_model_diagnostics`` hook; BRA's route recall is the built-in one)."""

from __future__ import annotations

import pytest

from plugformer import hookimpl
from plugformer.compare import compare
from plugformer.registry.registry import default_registry

SMALL = dict(steps=2, batch=4, timing_repeats=1, progress=False, eval_lengths=[])


def test_bra_reports_route_recall_and_full_topk_recalls_everything():
    result = compare("gpt_tiny(layers=1, attn={fused, bra(region=4, topk=3), bra(region=4, topk=1)})",
                     task="mqar(pairs=4)", **SMALL)
    fused, full, one = result.rows
    assert fused.diagnostics == {}
    assert set(full.diagnostics) == {"route_recall", "routing_entropy", "region_load"}
    assert full.diagnostics["route_recall"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < one.diagnostics["route_recall"] < 1.0
    table = result.table()
    assert "route recall" in table and "region load" in table


def test_a_third_party_plugin_adds_its_own_column():
    class Sparsity:
        @hookimpl
        def plugformer_model_diagnostics(self, model, run):
            run(model)
            return {"weight_norm": float(sum(p.detach().norm() for p in model.parameters()))}

    registry = default_registry()
    name = registry.register_plugin(Sparsity(), name="test-sparsity")
    try:
        result = compare("gpt_tiny(layers=1, attn={dense, fused})", task="mqar(pairs=4)", seeds=2, **SMALL)
    finally:
        registry.unregister_plugin(name)
    assert all(row.diagnostics["weight_norm"] > 0 for row in result.rows)
    assert "weight norm" in result.table()


def test_route_maps_of_bra_variants_reach_the_report(tmp_path):
    from html.parser import HTMLParser

    compare("gpt_tiny(layers=1, attn={fused, bra(region=4, topk=2)})", task="mqar(pairs=4)",
            out=tmp_path, **SMALL)
    runs = [line for line in (tmp_path / "runs.jsonl").read_text().splitlines() if line]
    assert len(runs) == 2
    (bra_maps,) = list((tmp_path / "figures").glob("*/routes.png"))  # one: fused has none
    assert bra_maps.read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "report.html").read_text()
    HTMLParser().feed(page)
    assert page.count('alt="route map of') == 1 and "route map of attn=bra" in page
