"""Contract tests over the registry (STYLE.md item 10): every registered attention kernel,
positional encoding, feed-forward network and norm, third-party ones included, builds through
``plugformer.build_part``, gives the right shapes without NaN, passes gradients to every
parameter, round-trips its state dict and honours ``dtype``."""

import pytest
import torch

import plugformer

D, H, B = 32, 4, 2
DH = D // H

#: Arguments that make parts do their own thing at these test sizes (sequences span more
#: regions than topk, more positions than the window).
PART_ARGS = {("attention", "bra"): "bra(region=4, topk=2)", ("attention", "local"): "local(window=4)"}


def registered(kind: str):
    params = []
    for part in plugformer.registry.list(kind):
        text = PART_ARGS.get((kind, part.name), part.name)
        marks = []
        if (kind, part.name) not in PART_ARGS and any(arg.required for arg in part.args):
            marks.append(pytest.mark.skip(reason=f"{part.label} needs arguments; add it to PART_ARGS"))
        params.append(pytest.param(part, text, id=part.name, marks=marks))
    return params


def build(kind, text, seed=0, **context):
    torch.manual_seed(seed)
    return plugformer.build_part(kind, text, **{"d_model": D, "heads": H, "max_len": 64, **context})


def assert_grads_reach_every_parameter(module):
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    for name, p in module.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def assert_state_dict_round_trips(kind, text, module, run, **context):
    other = build(kind, text, seed=1, **context)
    other.load_state_dict(module.state_dict(), strict=True)
    module.eval(), other.eval()
    with torch.no_grad():
        a, b = run(module), run(other)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(x, y)


def assert_dtype_honoured(kind, text, **context):
    module = build(kind, text, dtype=torch.float64, **context)
    assert all(p.dtype == torch.float64 for p in module.parameters())


# ---------------------------------------------------------------------------------- attention


def qkv(lq, lk, kv_heads=H, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, lq, DH, generator=g, requires_grad=True),
        torch.randn(B, kv_heads, lk, DH, generator=g, requires_grad=True),
        torch.randn(B, kv_heads, lk, DH, generator=g, requires_grad=True),
    )


@pytest.mark.parametrize("part, text", registered("attention"))
@pytest.mark.parametrize("lq, lk, kv_heads", [(12, 12, H), (5, 12, H), (12, 12, 2)], ids=["self", "cross", "gqa"])
def test_attention_contract(part, text, lq, lk, kv_heads):
    kernel = build("attention", text, kv_heads=kv_heads)
    q, k, v = qkv(lq, lk, kv_heads)
    out = kernel(q, k, v)
    assert out.shape == (B, H, lq, DH)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
    assert_grads_reach_every_parameter(kernel)
    assert_state_dict_round_trips("attention", text, kernel, lambda m: m(q, k, v), kv_heads=kv_heads)
    assert_dtype_honoured("attention", text)


@pytest.mark.parametrize("part, text", registered("attention"))
def test_attention_padding_contract(part, text):
    if not part.capabilities.get("supports_mask", True):
        pytest.skip(f"{part.label} does not declare supports_mask")
    kernel = build("attention", text)
    q, k, v = qkv(12, 12)
    mask = (torch.arange(12)[None, :] < torch.tensor([0, 7])[:, None])[:, None, None, :]  # row 0: all padding
    out = kernel(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all(), "queries whose keys are all masked must give zeros"
    changed = v.detach().clone()
    changed[1, :, 7:] = 5.0
    assert torch.allclose(kernel(q, k, changed, mask=mask)[1], out[1], atol=1e-5), "padded keys leak"
    out.square().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


@pytest.mark.parametrize("part, text", registered("attention"))
def test_attention_causal_contract(part, text):
    if not part.capabilities.get("supports_causal", True):
        pytest.skip(f"{part.label} does not declare supports_causal")
    kernel = build("attention", text, causal=True)
    q, k, v = qkv(12, 12)
    with torch.no_grad():
        out = kernel(q, k, v, causal=True)
        for t in (3, 8):
            q2, k2, v2 = q.clone(), k.clone(), v.clone()
            for x in (q2, k2, v2):
                x[:, :, t:] = torch.randn_like(x[:, :, t:])
            assert torch.allclose(kernel(q2, k2, v2, causal=True)[:, :, :t], out[:, :, :t], atol=1e-6)


# --------------------------------------------------------------------------------- positional


@pytest.mark.parametrize("part, text", registered("positional"))
def test_positional_contract(part, text):
    pe = build("positional", text)
    x = torch.randn(B, 10, D, requires_grad=True)
    positions = torch.arange(10)
    outputs = [pe.embed(x, positions)]
    assert outputs[0].shape == x.shape
    if pe.uses_rotate:
        q, k, _ = qkv(10, 10)
        rq, rk = pe.rotate(q, k, positions, positions)
        assert rq.shape == q.shape and rk.shape == k.shape
        outputs += [rq, rk]
    if pe.uses_bias:
        bias = pe.score_bias(positions[:, None], positions[None, :])
        assert bias.shape == (H, 10, 10)
        outputs.append(bias)
    for out in outputs:
        assert torch.isfinite(out).all()
    sum(out.sum() for out in outputs).backward()
    assert_grads_reach_every_parameter(pe)
    assert_state_dict_round_trips("positional", text, pe, lambda m: m.embed(x, positions))
    assert_dtype_honoured("positional", text)


# ------------------------------------------------------------------------- feedforward, norm


@pytest.mark.parametrize("kind", ["feedforward", "norm"])
def test_every_kind_has_parts(kind):
    assert plugformer.registry.list(kind)


@pytest.mark.parametrize("part, text", registered("feedforward") + registered("norm"))
def test_position_wise_contract(part, text):
    module = build(part.kind, text)
    x = torch.randn(4, 16, D, requires_grad=True)  # 64 tokens: enough to reach every expert of a MoE
    out = module(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert_grads_reach_every_parameter(module)
    assert_state_dict_round_trips(part.kind, text, module, lambda m: m(x))
    assert_dtype_honoured(part.kind, text)
