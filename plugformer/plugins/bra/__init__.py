"""``bra``: bi-level routing attention for 1-D token sequences, as a plugformer plugin.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention" (CVPR 2023), and for
causal attention Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs" (2025).

The package, in reading order:

* this module: the factory :func:`bra` (the spec schema, every argument check) and the hooks;
* :mod:`.kernel`: :class:`BiLevelRoutingAttention`, which routes and picks a path;
* :mod:`.routing`: which key regions each query attends (:func:`route`), and :class:`Geometry`;
* :mod:`.decoding`: region means kept in the KV cache, so that a decoding step routes without
  re-reading every cached key;
* :mod:`.cpu`: the torch paths, every score under the routed mask (short inputs), gathered
  :mod:`.tiles` through the flash-style attention of :mod:`.sparse` (long inputs), or each
  query's regions gathered for it alone (a cached decoding step);
* :mod:`.grouped` (with :mod:`.grouped_fused` and :mod:`.grouped_masked`): MoBA's layout for
  causal token routing, each key region attended by exactly the queries that chose it; the
  fused path's custom operators tell ``FlopCounterMode`` the FLOPs the routing asks for;
* :mod:`.sparse_region` and :mod:`.tile_ops`: region tiles head by head, and the arithmetic the
  tile attentions share;
* :mod:`.flex`: the CUDA path, ``flex_attention`` with a block mask from the routing;
* :mod:`.local_context`: BiFormer's local-context conv over V;
* :mod:`.routes`: recording route maps from outside the kernel, and drawing them;
* :mod:`.diagnostics`: route recall, routing entropy and region load per layer;
* :mod:`.cli`: the ``plugformer routes`` command.
"""

from __future__ import annotations

from typing import Literal, Optional

from plugformer.core.context import BuildContext
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl
from plugformer.plugins.bra.cli import plugformer_register_commands
from plugformer.plugins.bra.diagnostics import LayerStats, plugformer_model_diagnostics, route_stats, routing_stats
from plugformer.plugins.bra.kernel import BACKENDS, BiLevelRoutingAttention
from plugformer.plugins.bra.local_context import LocalContext
from plugformer.plugins.bra.routes import plot_routes, plugformer_model_figures, record_routes
from plugformer.plugins.bra.routing import ROUTINGS, Geometry, n_regions, resolve_routing, route

__all__ = [
    "BiLevelRoutingAttention", "Geometry", "LayerStats", "LocalContext", "bra", "n_regions",
    "plot_routes", "plugformer_register", "plugformer_register_commands", "record_routes", "route",
    "plugformer_model_diagnostics", "plugformer_model_figures", "route_stats", "routing_stats",
]


def bra(
    ctx: BuildContext,
    *,
    region: int = 64,
    topk: int = 4,
    routing: Literal["region", "token", "auto"] = "auto",
    lce: int = 0,
    scale: Optional[float] = None,
    backend: Literal["auto", "torch", "flex"] = "auto",
    dense_up_to: int = 64,
    grouped_from: int = 128,
) -> BiLevelRoutingAttention:
    """Bi-level routing attention (BiFormer; MoBA when causal): each query attends its top-k regions.

    Args:
        region: tokens per region.
        topk: regions each query attends (its own included when causal); at most
            ceil(max_len / region).
        routing: region (BiFormer, bidirectional), token (MoBA, per token) or auto (token when
            causal or in a decoder, else region).
        lce: kernel size of the local-context depthwise conv over V (odd); 0 = off.
        scale: score multiplier; none means head_dim ** -0.5.
        backend: auto (flex_attention on CUDA, gathered tiles elsewhere), torch or flex.
        dense_up_to: up to this many keys the torch backend computes every score under the
            routed mask instead of gathering tiles: the same attention, faster for short inputs
            (5x at 16 tokens; the crossover is 64-128 keys bidirectional, 128-256 causal, on
            2 CPU cores, by benchmarks/bra_short.py). Default 64; 0 = always tiles.
        grouped_from: from this many keys, causal token-routed self-attention (no general mask,
            no dropout) takes MoBA's grouped layout, whose work is L * topk * region scores
            whatever the routing: the same attention, faster than the tiles (1.5x at 128 keys,
            2.3x at 256, fwd+bwd, 1 thread). Default 128.

    Raises:
        ArgumentError: (a ``ValueError`` naming the argument) region or topk below 1, topk
            above the regions of max_len, an unknown routing or backend, an even or negative
            lce, a scale not above 0, a negative dense_up_to or grouped_from; routing='region' for causal
            attention or a decoder's cross-attention (a region's mean query holds later
            tokens); lce with cross-attention.
        ValueError: the context's dropout outside [0, 1).
    """
    if not 0.0 <= ctx.dropout < 1.0:
        raise ValueError(f"bra: dropout must be in [0, 1), got {ctx.dropout}")
    if not isinstance(region, int) or region < 1:
        raise ArgumentError("region", f"bra: region must be a whole number of tokens >= 1, got {region!r}")
    if not isinstance(topk, int) or topk < 1:
        raise ArgumentError("topk", f"bra: topk must be a whole number of regions >= 1, got {topk!r}")
    if routing not in ROUTINGS:
        raise ArgumentError("routing", f"bra: routing must be one of {', '.join(ROUTINGS)}; got {routing!r}")
    if not isinstance(lce, int) or lce < 0 or (lce and lce % 2 == 0):
        raise ArgumentError("lce", f"bra: lce must be 0 (off) or an odd kernel size >= 1, got {lce!r}")
    if scale is not None and not scale > 0:
        raise ArgumentError("scale", f"bra: scale must be > 0 or none (head_dim ** -0.5), got {scale!r}")
    if backend not in BACKENDS:
        raise ArgumentError("backend", f"bra: backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not isinstance(dense_up_to, int) or dense_up_to < 0:
        raise ArgumentError("dense_up_to", f"bra: dense_up_to must be a number of keys >= 0, got {dense_up_to!r}")
    if not isinstance(grouped_from, int) or grouped_from < 0:
        raise ArgumentError(
            "grouped_from", f"bra: grouped_from must be a number of keys >= 0, got {grouped_from!r}"
        )
    try:
        resolve_routing(routing, ctx.causal)
    except ValueError as err:
        raise ArgumentError("routing", f"bra: {err}") from None
    if routing == "region" and ctx.decoder:
        raise ArgumentError(
            "routing",
            "bra: routing='region' cannot serve a decoder's cross-attention: a region's mean query "
            "contains later decoder tokens, which leaks the future and breaks cached decoding; "
            "use routing='token' or 'auto'",
        )
    if routing == "auto" and ctx.decoder:
        routing = "token"
    most = n_regions(ctx.max_len, region)
    if topk > most:
        raise ArgumentError(
            ("topk", "region"),
            f"bra: topk={topk} is more than the {most} regions of max_len={ctx.max_len} with "
            f"region={region}; use topk <= {most} or a smaller region",
        )
    if lce and ctx.cross:
        raise ArgumentError(
            "lce", f"bra: lce={lce} needs self-attention; cross-attention has no local context, use lce=0"
        )
    return BiLevelRoutingAttention(
        heads=ctx.heads, head_dim=ctx.head_dim, region=region, topk=topk, routing=routing, lce=lce,
        scale=scale, backend=backend, dropout=ctx.dropout, cross=ctx.cross, dense_up_to=dense_up_to,
        grouped_from=grouped_from, **ctx.factory_kwargs,
    )


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("attention", "bra", bra)
