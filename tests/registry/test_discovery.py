"""Plugin discovery: built-ins first, then entry points one by one; broken plugins are recorded,
not fatal; the installed example plugin and its ``cosine`` kernel."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

import plugformer.registry.discovery as discovery
from plugformer.core.context import BuildContext
from plugformer.hooks import hookimpl
from plugformer.registry.registry import DuplicatePartError, PluginError, Registry

EXAMPLE_INSTALLED = importlib.util.find_spec("plugformer_example_plugin") is not None
needs_example = pytest.mark.skipif(
    not EXAMPLE_INSTALLED,
    reason="plugformer_example_plugin is not installed (make test installs examples/plugin)",
)

EXAMPLE = ["example"] if EXAMPLE_INSTALLED else []  # its entry-point name, when installed
TEST_MODULES = ("pf_test_bad_import", "pf_test_bad_hook", "pf_test_good")


@pytest.fixture
def no_builtins(monkeypatch):
    """Load entry points only, so these tests do not depend on the built-in plugins."""
    monkeypatch.setattr(discovery, "builtin_plugins", lambda: ())


@pytest.fixture
def broken_dists(tmp_path, monkeypatch, no_builtins):
    """Two installed distributions on sys.path: ``broken-plugins`` (one plugin that raises at
    import, one whose hook raises half-way) and ``good-plugin`` (adds norm:plain)."""
    _write_dist(tmp_path, "broken-plugins", {"bad_import": "pf_test_bad_import",
                                             "bad_hook": "pf_test_bad_hook"})
    _write_dist(tmp_path, "good-plugin", {"good": "pf_test_good"})
    (tmp_path / "pf_test_bad_import.py").write_text('raise RuntimeError("boom at import")\n')
    (tmp_path / "pf_test_bad_hook.py").write_text(textwrap.dedent('''
        from plugformer.hooks import hookimpl

        def half(ctx):
            """Half a norm."""

        @hookimpl
        def plugformer_register(registry):
            registry.add("norm", "half", half)
            raise RuntimeError("boom in hook")
    '''))
    (tmp_path / "pf_test_good.py").write_text(textwrap.dedent('''
        from plugformer.hooks import hookimpl

        def plain(ctx, *, eps: float = 1e-5):
            """A plain norm."""

        @hookimpl
        def plugformer_register(registry):
            registry.add("norm", "plain", plain)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in TEST_MODULES:
        sys.modules.pop(name, None)


def _write_dist(root, name, entry_points: dict[str, str]) -> None:
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {module}\n" for ep, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[plugformer]\n{lines}")


def _failures(reg):
    return {f.name: f for f in reg.failures}


def test_broken_plugins_are_recorded_and_the_rest_works(broken_dists, monkeypatch):
    monkeypatch.delenv("PLUGFORMER_STRICT", raising=False)
    monkeypatch.delenv("PLUGFORMER_DISABLE_PLUGINS", raising=False)
    reg = Registry()
    reg.load_plugins()

    failures = _failures(reg)
    assert failures["bad_import"].distribution == "broken-plugins"
    assert failures["bad_import"].error == "RuntimeError: boom at import"
    assert "pf_test_bad_import.py" in failures["bad_import"].traceback
    assert failures["bad_hook"].error == "RuntimeError: boom in hook"
    assert ("norm", "half") not in reg  # what the failed hook added is gone

    assert ("norm", "plain") in reg
    good = [p for p in reg.plugins if p.name == "good"]
    assert [(p.distribution, p.version, p.module) for p in good] == [
        ("good-plugin", "1.0", "pf_test_good")
    ]
    assert reg.get("norm", "plain").source == "good"
    assert not {"bad_import", "bad_hook"} & {p.name for p in reg.plugins}

    reg.load_plugins()  # loads once
    assert len(reg.failures) == len(failures)


def test_strict_mode_raises_naming_plugin_and_distribution(broken_dists, monkeypatch):
    monkeypatch.setenv("PLUGFORMER_STRICT", "1")
    monkeypatch.delenv("PLUGFORMER_DISABLE_PLUGINS", raising=False)
    with pytest.raises(PluginError, match=r"plugin 'bad_hook' \(distribution broken-plugins\)"
                       r" failed to load: RuntimeError: boom in hook"):
        Registry().load_plugins()


def test_disabled_plugins_are_skipped(broken_dists, monkeypatch):
    monkeypatch.setenv("PLUGFORMER_STRICT", "1")
    monkeypatch.setenv("PLUGFORMER_DISABLE_PLUGINS", "bad_import, bad_hook,example")
    reg = Registry()
    reg.load_plugins()
    assert reg.failures == []
    assert reg.disabled == ["bad_hook", "bad_import", *EXAMPLE]
    assert ("norm", "plain") in reg
    assert "pf_test_bad_import" not in sys.modules


def test_a_distribution_name_disables_all_its_plugins(broken_dists, monkeypatch):
    monkeypatch.delenv("PLUGFORMER_DISABLE_PLUGINS", raising=False)
    reg = Registry()
    reg.load_plugins(strict=True, disable=["broken-plugins", "plugformer-example-plugin"])
    assert reg.disabled == ["bad_hook", "bad_import", *EXAMPLE]
    assert ("norm", "plain") in reg


def test_missing_builtin_is_a_recorded_failure(monkeypatch):
    monkeypatch.setattr(discovery, "builtin_plugins", lambda: ("plugformer.plugins.not_there",))
    reg = Registry()
    reg.load_plugins(strict=False, disable=["example"])
    (failure,) = reg.failures
    assert (failure.name, failure.distribution) == ("plugformer.plugins.not_there", "plugformer")
    assert failure.error.startswith("ModuleNotFoundError")


def test_builtins_load_first_and_win_a_name_conflict(broken_dists, monkeypatch):
    builtin = types.ModuleType("pf_test_builtin")

    def plain(ctx):
        """The built-in plain norm."""

    @hookimpl
    def plugformer_register(registry):
        registry.add("norm", "plain", plain)

    builtin.plugformer_register = plugformer_register
    monkeypatch.setitem(sys.modules, "pf_test_builtin", builtin)
    monkeypatch.setattr(discovery, "builtin_plugins", lambda: ("pf_test_builtin",))
    reg = Registry()
    reg.load_plugins(strict=False, disable=["example"])
    assert reg.plugins[0].name == "pf_test_builtin"
    assert reg.plugins[0].distribution == "plugformer"
    assert reg.get("norm", "plain").factory is plain
    conflict = _failures(reg)["good"]
    assert conflict.error.startswith(DuplicatePartError.__name__)
    assert "registered by pf_test_builtin" in conflict.error and "good tried" in conflict.error


def test_environment_parsing(monkeypatch):
    monkeypatch.setenv("PLUGFORMER_DISABLE_PLUGINS", " a, b ,,c")
    assert discovery.disabled_from_env() == {"a", "b", "c"}
    for value, expected in [("1", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv("PLUGFORMER_STRICT", value)
        assert discovery.strict_from_env() is expected


# -- the installed example plugin --------------------------------------------------------------


@needs_example
def test_example_plugin_is_discovered_listed_and_described(no_builtins, monkeypatch):
    monkeypatch.delenv("PLUGFORMER_DISABLE_PLUGINS", raising=False)
    reg = Registry()
    reg.load_plugins(strict=True)
    (info,) = [p for p in reg.plugins if p.name == "example"]
    assert (info.distribution, info.module) == (
        "plugformer-example-plugin",
        "plugformer_example_plugin",
    )
    assert info.version == "0.1.0"
    assert [p.label for p in reg.list(pattern="*cos*")] == ["attention:cosine"]

    desc = reg.describe("attention", "cosine")
    assert desc.source == "example"
    assert desc.summary.startswith("Cosine-similarity attention")
    (init_scale,) = desc.args
    assert (init_scale.name, init_scale.type, init_scale.default) == ("init_scale", float, 10.0)
    assert "temperature" in init_scale.doc
    assert desc.capabilities["supports_causal"] and desc.capabilities["supports_bias"]


def _cosine_reference(q, k, v, scale, mask=None, bias=None):
    """SDPA on unit-length q and k with the temperature as scale; rows with no key give 0."""
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    lq, lk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(lq, lk, dtype=torch.bool) if mask is None else mask
    allowed = allowed.expand(q.shape[0], q.shape[1], lq, lk)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    if bias is not None:
        additive = additive + bias
    out = F.scaled_dot_product_attention(
        qn, kn, v, attn_mask=additive, scale=scale, enable_gqa=True
    )
    return torch.where(allowed.any(-1, keepdim=True), out, torch.zeros(()))


@pytest.fixture
def qkv():
    torch.manual_seed(0)
    b, h, hkv, lq, lk, dh = 2, 4, 2, 5, 7, 8
    return torch.randn(b, h, lq, dh), torch.randn(b, hkv, lk, dh), torch.randn(b, hkv, lk, dh)


@needs_example
def test_cosine_matches_sdpa_on_normalised_queries_and_keys(qkv):
    from plugformer_example_plugin import cosine

    q, k, v = qkv
    kernel = cosine(BuildContext(d_model=32, heads=4, kv_heads=2), init_scale=3.0)
    lq, lk = q.shape[-2], k.shape[-2]
    padding = torch.ones(2, 1, 1, lk, dtype=torch.bool)
    padding[1, ..., -3:] = False
    causal = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)  # bottom-right
    no_keys = torch.ones(2, 1, lq, lk, dtype=torch.bool)
    no_keys[0, :, 1] = False  # one query row sees nothing

    torch.testing.assert_close(kernel(q, k, v), _cosine_reference(q, k, v, 3.0))
    torch.testing.assert_close(
        kernel(q, k, v, mask=padding), _cosine_reference(q, k, v, 3.0, padding)
    )
    torch.testing.assert_close(
        kernel(q, k, v, causal=True), _cosine_reference(q, k, v, 3.0, causal)
    )
    torch.testing.assert_close(
        kernel(q, k, v, mask=padding, causal=True),
        _cosine_reference(q, k, v, 3.0, padding & causal),
    )
    out = kernel(q, k, v, mask=no_keys)
    assert torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1]))
    torch.testing.assert_close(out, _cosine_reference(q, k, v, 3.0, no_keys))


@needs_example
def test_cosine_adds_the_positional_bias(qkv):
    from plugformer_example_plugin import CosineAttention

    q, k, v = qkv
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])

    def alibi(q_idx, k_idx):
        return -slopes[:, None, None] * (q_idx - k_idx).abs()  # (H, Lq, Lk)

    grid = alibi(torch.arange(5)[:, None], torch.arange(7)[None, :])
    kernel = CosineAttention(init_scale=10.0)
    torch.testing.assert_close(
        kernel(q, k, v, score_bias=alibi), _cosine_reference(q, k, v, 10.0, bias=grid)
    )


@needs_example
def test_cosine_gradients_are_finite_with_a_fully_masked_row(qkv):
    from plugformer_example_plugin import CosineAttention

    q, k, v = (t.clone().requires_grad_() for t in qkv)
    kernel = CosineAttention(init_scale=10.0)
    mask = torch.ones(1, 1, 5, 7, dtype=torch.bool)
    mask[..., 0, :] = False
    kernel(q, k, v, mask=mask).sum().backward()
    for tensor in (q, k, v, kernel.scale):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    assert kernel.scale.grad.abs() > 0


@needs_example
def test_cosine_factory_reads_the_context_and_checks_its_argument():
    from plugformer_example_plugin import cosine

    kernel = cosine(BuildContext(dropout=0.25, dtype=torch.float64), init_scale=5.0)
    assert kernel.scale.item() == 5.0 and kernel.scale.dtype == torch.float64
    assert kernel.dropout.p == 0.25
    with pytest.raises(ValueError, match="init_scale must be positive, got -1"):
        cosine(BuildContext(), init_scale=-1.0)
