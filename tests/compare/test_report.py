"""report.html: one file that parses, names every variant, embeds every figure, fetches nothing."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from plugformer.compare import Comparison, EvalResult, VariantResult  # noqa: E402
from plugformer.compare.report import choose_runs, records_from_comparison, write_report  # noqa: E402
from plugformer.compare.report_figures import png  # noqa: E402
from plugformer.compare.store import RunRecord  # noqa: E402

TASK = "copy(length=16, vocab=64, eval_lengths=[32])"
EVIL = "attn=<b>bra</b> & co"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> tuple[_Page, str]:
    source = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(source)
    page.close()
    return page, source


def _run(variant, seed, lr, em, *, status="ok", val=None, steps=200):
    rng = np.random.default_rng(seed)
    losses = list(3.0 * np.exp(-np.arange(steps) / 60) + rng.uniform(0, 0.05, steps))
    metrics = {} if status != "ok" else {"exact_match@16": em, "exact_match@32": em / 2,
                                         "accuracy@16": min(1.0, em + 0.05), "loss@16": 1 - em}
    if val is not None:
        metrics["val_exact_match@16"] = val
    curve = [{"step": s, "seconds": s * 0.01, "flops": s * 1e9, "exact_match@16": em * s / steps}
             for s in (50, 100, 150, 200)]
    return RunRecord(variant=variant, spec=f"encdec({variant})", task=TASK, seed=seed, lr=lr,
                     steps=steps, status=status, error=None if status == "ok" else "non-finite loss",
                     primary="exact_match@16", steps_done=steps if status == "ok" else 12,
                     metrics=metrics, losses=losses, curve=curve, times={"train_s": 2.0 + seed},
                     info={"device": "cpu", "backend": "math", "torch": "2.5", "plugformer": "0.1.0",
                           "git_commit": "abc123", "flops_fwd_bwd": 1e9})


def _records():
    runs = []
    for seed in range(3):
        runs.append(_run("attn=dense", seed, 1e-3, 0.98 + seed * 0.005, val=0.5))
        runs.append(_run("attn=dense", seed, 3e-3, 0.90 + seed * 0.01, val=0.9))  # best on val
        runs.append(_run(EVIL, seed, 1e-3, 0.10 + seed * 0.01))
        runs.append(_run("attn=nan_kernel", seed, 1e-3, 0.0, status="failed"))
    return runs


def _route_png() -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.subplots().imshow(np.eye(4))
    return png(figure)


def test_report_parses_names_every_variant_and_embeds_every_figure(tmp_path):
    path = write_report(_records(), tmp_path, route_maps={EVIL: _route_png()}, target=0.5)
    assert path == tmp_path / "report.html"
    page, source = _parse(path)
    text = " ".join(page.text)
    for variant in ("attn=dense", EVIL, "attn=nan_kernel"):
        assert variant in text
    assert "<b>" not in source and not any(tag == "b" for tag, _ in page.tags)
    images = [a["src"] for tag, a in page.tags if tag == "img"]
    # loss curves, cost against quality, quality against length, one route map
    assert len(images) == 4 == source.count("data:image/png;base64,")
    assert all(src.startswith("data:image/png;base64,") for src in images)
    for field in ("canonical spec", "learning rate", "torch", "plugformer", "git commit",
                  "device", "attention backend used", "wall time"):
        assert text.count(field) >= 3, field
    assert "steps to 0.5" in text and "reached" in text


def test_report_loads_nothing_from_the_network(tmp_path):
    page, source = _parse(write_report(_records(), tmp_path / "r.html", route_maps={EVIL: _route_png()}))
    for tag, attrs in page.tags:
        assert not (tag == "script" and "src" in attrs)
        assert tag != "link"
        for name in ("src", "href", "srcset", "data", "action"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", source, re.I)
    assert "@import" not in source and "url(" not in source


def test_summary_marks_the_worse_variant_and_shows_the_rate_chosen_on_validation(tmp_path):
    chosen, how = choose_runs(_records())
    assert {r.lr for r in chosen["attn=dense"]} == {3e-3}
    assert "best of 2 on val_exact_match@16" in how["attn=dense"]
    _, source = _parse(write_report(_records(), tmp_path))
    rows = [cells for cells in _table_rows(source) if cells and cells[0] in ("attn=dense", EVIL)]
    marks = {cells[0]: cells[1] for cells in rows[:2]}
    assert marks["attn=dense"] == "best"
    assert marks[EVIL].startswith("worse")
    assert rows[0][2] == "0.003"
    dense_em = [0.90, 0.91, 0.92]
    half = 4.303 * np.std(dense_em, ddof=1) / np.sqrt(3)  # t(0.975, 2) = 4.303
    assert rows[0][4] == f"{100 * np.mean(dense_em):.1f} ± {100 * half:.1f}%"


def _table_rows(source: str) -> list[list[str]]:
    class Rows(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag == "td":
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                self.rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    rows = Rows()
    rows.feed(source)
    return rows.rows


def test_a_comparison_reports_too(tmp_path):
    row = VariantResult(index=0, label="attn=dense", spec="transformer_tiny(attn=dense(scale=none))",
                        written="transformer_tiny(attn=dense)", kind="encdec", steps_done=3,
                        train_s=1.5, eval_s=0.25, losses=[4.0, 2.0, 1.0], flops_fwd_bwd=10,
                        evals=[EvalResult(16, 0.1, 0.995, 0.98), EvalResult(32, 2.5, 0.5, 0.0)])
    comparison = Comparison(rows=[row], task=TASK, primary_metric="exact_match", lengths=[16, 32],
                            settings={"steps": 3, "lr": 0.003, "seed": 0, "device": "cpu"})
    records = records_from_comparison(comparison)
    assert records[0].metrics["exact_match@16"] == 0.98 and records[0].primary == "exact_match@16"
    page, source = _parse(write_report(comparison, tmp_path))
    assert "attn=dense" in " ".join(page.text)
    summary = next(cells for cells in _table_rows(source) if cells and cells[0] == "attn=dense")
    assert "98.0% (1 seed)" in summary and not any("±" in cell for cell in summary)
    assert source.count("data:image/png;base64,") == 3


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="no runs to report"):
        write_report([], tmp_path)
    with pytest.raises(ValueError, match=r"route maps given for \['attn=nope'\]"):
        write_report(_records(), tmp_path, route_maps={"attn=nope": b""})
