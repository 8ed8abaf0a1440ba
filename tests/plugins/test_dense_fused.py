"""``dense`` and ``fused``: both against a brute-force reference written here, and each other."""

import math

import pytest
import torch

import plugformer

B, H, DH = 2, 4, 8
TOL = 1e-5


def kernel(name: str):
    return plugformer.build_part("attention", name, d_model=H * DH, heads=H)


def qkv(lq=5, lk=5, kv_heads=H, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, lq, DH, generator=g, requires_grad=True)
    k = torch.randn(B, kv_heads, lk, DH, generator=g, requires_grad=True)
    v = torch.randn(B, kv_heads, lk, DH, generator=g, requires_grad=True)
    return q, k, v


def reference(q, k, v, *, allowed=None, bias=None):
    """Attention by its definition, one query at a time: softmax over the allowed keys of
    q . k / sqrt(d) (+ bias), zeros where no key is allowed. allowed: (B, H, Lq, Lk) bool."""
    heads, lq, lk = q.shape[1], q.shape[2], k.shape[2]
    group = heads // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(heads):
            for i in range(lq):
                keys = [j for j in range(lk) if allowed is None or allowed[b, h, i, j]]
                if not keys:
                    continue
                scores = torch.stack([
                    q[b, h, i] @ k[b, h // group, j] / math.sqrt(q.shape[-1])
                    + (0.0 if bias is None else bias[h, i, j])
                    for j in keys
                ])
                weights = scores.softmax(0)
                out[b, h, i] = sum(w * v[b, h // group, j] for w, j in zip(weights, keys))
    return out


def causal_allowed(lq, lk):
    """Bottom-right: query i sits at position lk - lq + i."""
    return torch.tensor([[j <= lk - lq + i for j in range(lk)] for i in range(lq)])


def alibi_like(q_idx, k_idx):
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    return -slopes[:, None, None] * (q_idx - k_idx).abs().float()


def padding_mask(lengths, lk):
    """(B, 1, 1, Lk), True = may attend."""
    return (torch.arange(lk)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


CASES = {
    "plain": dict(),
    "padding": dict(lk=6, mask=padding_mask([6, 3], 6)),
    "causal": dict(causal=True),
    "causal-cache": dict(lq=3, lk=7, causal=True),
    "causal-padding": dict(lq=4, lk=6, causal=True, mask=padding_mask([6, 4], 6)),
    "arbitrary": dict(lq=5, lk=6, mask=torch.rand(B, H, 5, 6, generator=torch.Generator().manual_seed(5)) > 0.4),
    "gqa": dict(kv_heads=2),
    "gqa-causal-cache": dict(kv_heads=1, lq=2, lk=5, causal=True),
    "bias": dict(lq=4, lk=6, score_bias=alibi_like),
    "bias-causal-padding": dict(lq=4, lk=6, causal=True, score_bias=alibi_like, mask=padding_mask([6, 5], 6)),
}


def run_case(name, case):
    q, k, v = qkv(case.get("lq", 5), case.get("lk", 5), case.get("kv_heads", H))
    kwargs = {key: case[key] for key in ("mask", "causal", "score_bias") if key in case}
    return (q, k, v), kernel(name)(q, k, v, **kwargs)


def allowed_of(case, lq, lk):
    allowed = torch.ones(B, H, lq, lk, dtype=torch.bool)
    if "mask" in case:
        allowed = allowed & case["mask"]
    if case.get("causal"):
        allowed = allowed & causal_allowed(lq, lk)
    return allowed


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["dense", "fused"])
def test_kernel_equals_the_definition(name, case):
    spec = CASES[case]
    (q, k, v), out = run_case(name, spec)
    lq, lk = q.shape[2], k.shape[2]
    bias = None
    if "score_bias" in spec:
        bias = spec["score_bias"](torch.arange(lq)[:, None], torch.arange(lk)[None, :])
    with torch.no_grad():
        expected = reference(q, k, v, allowed=allowed_of(spec, lq, lk), bias=bias)
    assert out.shape == q.shape
    assert (out - expected).abs().max() <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_dense_and_fused_agree_with_gradients(case):
    (qd, kd, vd), dense_out = run_case("dense", CASES[case])
    (qf, kf, vf), fused_out = run_case("fused", CASES[case])
    assert (dense_out - fused_out).abs().max() <= TOL
    weight = torch.randn(dense_out.shape, generator=torch.Generator().manual_seed(9))
    (dense_out * weight).sum().backward()
    (fused_out * weight).sum().backward()
    for a, b in ((qd, qf), (kd, kf), (vd, vf)):
        assert (a.grad - b.grad).abs().max() <= TOL


@pytest.mark.parametrize("name", ["dense", "fused"])
@pytest.mark.parametrize(
    "setup",
    [
        dict(mask=torch.tensor([True, False, True, True, True, True])[None, None, :, None].expand(B, H, 6, 6).clone()),
        dict(lq=6, lk=3, causal=True),  # the first three queries sit before every key
        dict(mask=padding_mask([0, 4], 6)),  # the first sequence is all padding
    ],
    ids=["one-row", "lq>lk-causal", "all-padding"],
)
def test_a_query_without_keys_gives_zeros_and_finite_gradients(name, setup):
    lq, lk = setup.get("lq", 6), setup.get("lk", 6)
    q, k, v = qkv(lq, lk)
    kwargs = {key: setup[key] for key in ("mask", "causal") if key in setup}
    out = kernel(name)(q, k, v, **kwargs)
    allowed = allowed_of(setup, lq, lk)
    blocked_rows = ~allowed.any(-1)  # (B, H, Lq)
    assert blocked_rows.any()
    assert torch.isfinite(out).all()
    assert (out[blocked_rows] == 0).all()
    with torch.no_grad():
        expected = reference(q, k, v, allowed=allowed)
    assert (out - expected).abs().max() <= TOL
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


def test_dense_weights_rows_sum_to_one():
    q, k, _ = qkv(4, 6)
    mask = padding_mask([6, 2], 6)
    weights = kernel("dense").weights(q, k, mask=mask, causal=True, score_bias=alibi_like)
    assert weights.shape == (B, H, 4, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(B, H, 4))
    assert (weights[~allowed_of(dict(mask=mask, causal=True), 4, 6)] == 0).all()


def test_dense_weights_of_a_row_without_keys_are_zero():
    q, k, _ = qkv(3, 3)
    weights = kernel("dense").weights(q, k, mask=padding_mask([0, 3], 3))
    assert (weights[0] == 0).all()
    assert torch.allclose(weights[1].sum(-1), torch.ones(H, 3))


def test_pinned_backend_that_cannot_run_says_so():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match=r"fused\(backend='cudnn'\) cannot run here"):
        kernel("fused(backend='cudnn')")(q, k, v)


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_pinned_backends_that_run_agree(backend):
    (q, k, v), expected = run_case("dense", CASES["causal"])
    out = kernel(f"fused(backend='{backend}')")(q, k, v, causal=True)
    assert (out - expected).abs().max() <= TOL


def test_attention_dropout_only_while_training():
    attention = plugformer.build_part("attention", "fused", d_model=H * DH, heads=H, dropout=0.5)
    q, k, v = qkv()
    attention.eval()
    assert torch.equal(attention(q, k, v), attention(q, k, v))
    attention.train()
    assert not torch.equal(attention(q, k, v), attention(q, k, v))


def test_a_model_trained_with_dense_loads_into_fused():
    torch.manual_seed(0)
    spec = "transformer_tiny(attn={}, dropout=0.0)"
    dense_model = plugformer.build(spec.format("dense"))
    optimizer = torch.optim.Adam(dense_model.parameters(), lr=1e-2)
    src = torch.randint(3, 256, (4, 9))
    tgt = torch.randint(3, 256, (4, 7))
    for _ in range(3):
        logits = dense_model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fused_model = plugformer.build(spec.format("fused"))
    fused_model.load_state_dict(dense_model.state_dict(), strict=True)
    dense_model.eval(), fused_model.eval()
    with torch.no_grad():
        expected = dense_model(src, tgt)
        assert (fused_model(src, tgt) - expected).abs().max() <= 1e-4 * expected.abs().max()
