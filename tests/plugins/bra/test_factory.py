"""The ``bra`` factory: what it reads from the context, the arguments it refuses (each error
naming its argument), and its registration."""

from __future__ import annotations

import pytest
import torch

from plugformer import SpecError, build_part
from plugformer.core.context import BuildContext
from plugformer.plugins.bra import BiLevelRoutingAttention, bra
from .reference import qkv


def test_factory_reads_the_context():
    ctx = BuildContext(d_model=64, heads=8, kv_heads=2, dropout=0.1, max_len=256)
    kernel = bra(ctx, region=16, topk=3, routing="token")
    assert (kernel.heads, kernel.head_dim, kernel.region, kernel.topk) == (8, 8, 16, 3)
    assert kernel.scale == 8**-0.5 and kernel.dropout == 0.1 and kernel.routing == "token"
    assert bra.__doc__.splitlines()[0] and "Args:" in bra.__doc__


BAD = [
    (dict(region=0), "region"),
    (dict(topk=0), "topk"),
    (dict(topk=5, region=64), "topk"),  # 4 regions in max_len=256
    (dict(routing="global"), "routing"),
    (dict(lce=4), "lce"),
    (dict(lce=-3), "lce"),
    (dict(backend="triton"), "backend"),
    (dict(scale=0.0), "scale"),
    (dict(dense_up_to=-1), "dense_up_to"),
    (dict(grouped_from=-1), "grouped_from"),
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        bra(BuildContext(d_model=64, heads=4, max_len=256), **kwargs)


def test_region_routing_refuses_causal_attention(path):
    with pytest.raises(ValueError, match="routing='region'.*future"):
        bra(BuildContext(d_model=64, heads=4, causal=True), routing="region")
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, routing="region", **path)
    with pytest.raises(ValueError, match="routing='region'"):
        kernel(*qkv(lq=8), causal=True)


def test_decoder_cross_attention_routes_each_query_alone(path):
    ctx = BuildContext(d_model=32, heads=4, cross=True, decoder=True)
    kernel = bra(ctx, **path, region=8, topk=2)
    assert kernel.routing == "token"
    q, k, v = qkv(lq=20, lk=40)
    changed = q.clone()
    changed[:, :, 12:] = torch.randn_like(changed[:, :, 12:]) * 10
    before, after = kernel(q, k, v), kernel(changed, k, v)
    torch.testing.assert_close(after[:, :, :12], before[:, :, :12], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="routing='region'.*decoder"):
        bra(ctx, routing="region")


def test_local_context_refuses_cross_attention():
    with pytest.raises(ValueError, match="lce"):
        bra(BuildContext(d_model=64, heads=4, cross=True), lce=3)


def test_registered_as_attention_bra():
    class Recorder:
        def __init__(self):
            self.added = []

        def add(self, kind, name, factory):
            self.added.append((kind, name, factory))

    from plugformer.plugins import bra as module

    recorder = Recorder()
    module.plugformer_register(recorder)
    assert recorder.added == [("attention", "bra", bra)]


def test_dense_up_to_reaches_the_kernel_with_its_default():
    ctx = BuildContext(d_model=64, heads=4, max_len=256)
    assert bra(ctx).dense_up_to == 64
    assert bra(ctx, dense_up_to=0).dense_up_to == 0
    assert bra(ctx).grouped_from == 128
    assert bra(ctx, grouped_from=0).grouped_from == 0


@pytest.mark.parametrize("text, value", [
    ("bra(region=8, topk=9)", "9"),
    ("bra(region=0)", "0"),
    ("bra(lce=4)", "4"),
    ("bra(dense_up_to=-1)", "-1"),
    ("bra(grouped_from=-5)", "-5"),
    ("bra(routing='region')", "'region'"),
])
def test_argument_errors_put_the_caret_under_the_value(text, value):
    causal = "routing" in text
    with pytest.raises(SpecError) as info:
        build_part("attention", text, d_model=64, heads=4, max_len=64, causal=causal)
    lines = str(info.value).splitlines()
    spec_line, caret_line = lines[1], lines[2]
    start = caret_line.index("^")
    assert caret_line.strip() == "^" * len(value)
    assert spec_line[start : start + len(value)] == value
