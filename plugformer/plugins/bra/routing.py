"""Routing of bi-level routing attention: which key regions each query attends.

Keys are cut into regions of ``region`` consecutive tokens from key position 0; the last region
may be partial. Padding (the tail of a partial region, and keys a key-padding mask blocks) never
enters a region mean, and a region with no real key is never chosen.

Two routings, both detached (the choice is not differentiated, as in BiFormer and MoBA):

* ``region`` (BiFormer, bidirectional): queries are cut into regions the same way; the mean query
  of each query region is scored against the mean key of every key region, summed over heads, and
  the ``topk`` best key regions are kept for every query of the region. Nothing forces a query
  region to choose its own key region.
* ``token`` (MoBA): every query scores its q against each region's mean key, each query head
  against its key/value head, summed over the heads, so one routing per token serves all heads
  (MoBA gates per head; one choice keeps one gather for all heads). Causal: the
  candidates are the regions entirely before the query's own region, the own region is always
  chosen (it counts towards ``topk``) and a token-level causal mask applies inside it; nothing
  the query may not see enters its choice, so it leaks no future token. Not causal: the ``topk``
  best of all regions.

Regions are cut by token position, not by index in a padded row: :func:`route` cuts from index
0, so the kernel first rolls each left-padded row left by :func:`region_shift` (its leading pads
modulo ``region``, :func:`roll_rows`), which puts a region boundary at every multiple of
``region`` real tokens, as for the same tokens alone; routes of such a row refer to the rolled
row (:meth:`.kernel.BiLevelRoutingAttention.route` returns them so).

``route`` returns region indices, -1 marking an empty slot (fewer regions than ``topk`` to
choose from):

* region routing: (B, n_q_regions, S), ``n_q_regions = ceil(Lq / region)``;
* token routing: (B, Lq, S); causal: slot 0 is the query's own region;

with ``S = min(topk, ceil(Lk / region))``, the other slots ordered by decreasing score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plugformer.core.tracing import eager

Routing = Literal["region", "token", "auto"]
ROUTINGS = ("region", "token", "auto")


@dataclass(frozen=True)
class Geometry:
    """Where the queries and keys of one attention call sit, and how they were routed.

    Attributes:
        lq: queries Lq; with ``causal``, query i sits at key position Lk - Lq + i.
        lk: keys Lk.
        region: tokens per key region R.
        token: whether the routes come from token routing ((B, Lq, S)) rather than region
            routing ((B, nq, S)).
        causal: bottom-right causal attention.
    """

    lq: int
    lk: int
    region: int
    token: bool
    causal: bool

    @property
    def nq(self) -> int:
        """Query regions: ceil(Lq / R)."""
        return n_regions(self.lq, self.region)

    @property
    def nk(self) -> int:
        """Key regions: ceil(Lk / R)."""
        return n_regions(self.lk, self.region)


def resolve_routing(routing: str, causal: bool) -> str:
    """``auto`` -> ``token`` when causal, else ``region``; refuses causal region routing."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}; got {routing!r}")
    if routing == "auto":
        return "token" if causal else "region"
    if routing == "region" and causal:
        raise ValueError(
            "routing='region' cannot be causal: a region's mean query contains the region's later "
            "tokens, so the routing would leak the future; use routing='token' (or 'auto')"
        )
    return routing


def n_regions(length: int, region: int) -> int:
    """Number of regions of ``region`` tokens that cover ``length`` tokens (the last may be partial)."""
    return math.ceil(length / region)


def region_means(x: Tensor, valid: Optional[Tensor], region: int) -> tuple[Tensor, Tensor]:
    """Mean of ``x`` over the real tokens of each region.

    Args:
        x: (B, Hx, L, Dh).
        valid: (B, L) bool, True = a real token; None = all real. The padded tail is never real.
        region: tokens per region.

    Returns:
        means (B, Hx, n, Dh), zero for a region without real tokens, and counts (B, n) of real
        tokens per region.
    """
    b, hx, length, dh = x.shape
    n = n_regions(length, region)
    pad = n * region - length
    if valid is None:  # no copy of x: whole regions summed in place, the partial last one apart
        whole = length // region
        whole_sums = whole_region_sums(x[:, :, : whole * region], region)  # (B, Hx, whole, Dh)
        return means_from_sums(whole_sums, x[:, :, whole * region :], region)
    weight = x.new_ones(b, length) if valid is None else valid.to(x.dtype)
    weight = F.pad(weight, (0, pad)).view(b, n, region)
    blocks = F.pad(x, (0, 0, 0, pad)).view(b, hx, n, region, dh)
    sums = torch.einsum("bhnrd,bnr->bhnd", blocks, weight)
    counts = weight.sum(-1)
    return sums / counts.clamp_min(1)[:, None, :, None], counts


def means_from_sums(whole_sums: Tensor, tail: Tensor, region: int) -> tuple[Tensor, Tensor]:
    """Region means (B, Hx, n, Dh) and counts (B, n), as :func:`region_means` without ``valid``
    gives them, from the sums of the whole regions (B, Hx, n_whole, Dh)
    (:func:`whole_region_sums`) and the tokens after them (B, Hx, P, Dh), P < ``region`` (the
    partial last region; P = 0 when there is none)."""
    sums = whole_sums
    if tail.shape[2]:
        sums = torch.cat([sums, tail.sum(2, keepdim=True)], dim=2)  # (B, Hx, n, Dh)
    counts = sums.new_full((sums.shape[0], sums.shape[2]), float(region))
    counts[:, -1] = tail.shape[2] or region
    return sums / counts[:, None, :, None], counts


def whole_region_sums(x: Tensor, region: int) -> Tensor:
    """(B, Hx, n * R, Dh) -> (B, Hx, n, Dh) sums over each region, without copying x."""
    b, hx, length, dh = x.shape
    if x.transpose(1, 2).is_contiguous():  # stored (B, L, Hx, Dh): sum whole token rows, 2x faster
        return x.transpose(1, 2).reshape(b, -1, region, hx, dh).sum(2).transpose(1, 2)
    return x.reshape(b, hx, -1, region, dh).sum(3)


def region_shift(key_valid: Optional[Tensor], region: int) -> Optional[Tensor]:
    """How far each row's regions start from index 0 so that they are cut by token position:
    (B,) long, the row's leading padded keys modulo ``region`` (0 for a row without real keys),
    or None when every row starts at 0. key_valid: (B, Lk), True = a real key."""
    if key_valid is None:
        return None
    lead = torch.where(key_valid.any(1), key_valid.int().argmax(1), 0)  # (B,) first real key
    shift = lead % region
    if not eager():
        return shift  # a zero shift rolls nothing; testing for one would break a compiled graph
    return shift if bool(shift.any()) else None


def roll_rows(x: Tensor, shift: Tensor, dim: int) -> Tensor:
    """Row b of ``x`` (batch first) rolled left by ``shift[b]`` along ``dim``: out[b, i] =
    x[b, (i + shift[b]) % L]. A negative shift rolls right."""
    length = x.shape[dim]
    index = (torch.arange(length, device=x.device)[None, :] + shift[:, None]) % length  # (B, L)
    index = index.view(index.shape[0], *([1] * (dim - 1)), length, *([1] * (x.dim() - dim - 1)))
    return x.gather(dim, index.expand(*x.shape[:dim], length, *x.shape[dim + 1:]))


def route(
    q: Tensor,
    k: Tensor,
    *,
    region: int,
    topk: int,
    causal: bool = False,
    routing: Routing = "auto",
    key_mask: Optional[Tensor] = None,
    query_mask: Optional[Tensor] = None,
    key_means: Optional[Tensor] = None,
) -> Tensor:
    """The key regions each query (region) attends; see the module docstring for the layout.

    Args:
        q: (B, H, Lq, Dh) queries; with ``causal`` query i sits at position Lk - Lq + i.
        k: (B, Hkv, Lk, Dh) keys, ``H % Hkv == 0``.
        region: tokens per region.
        topk: regions per query, the own region included for causal token routing.
        causal: bottom-right causal attention (token routing only).
        routing: ``region``, ``token`` or ``auto`` (token when causal, else region).
        key_mask: (B, Lk) bool, True = a real key (the library's True = may attend); padded keys
            are left out of the region means.
        query_mask: (B, Lq) bool, True = a real query; padded queries are left out of the
            query-region means (region routing only).
        key_means: (B, Hkv, ceil(Lk / region), Dh) the region means of ``k`` in the routing
            precision, as :func:`region_means` gives them, when the caller has them (a decoding
            step, :mod:`.decoding`); ``k`` is then not read. Needs ``key_mask`` None.

    Returns:
        long tensor, region routing (B, ceil(Lq / region), S), token routing (B, Lq, S), with
        S = min(topk, ceil(Lk / region)) and -1 in empty slots.
    """
    kind = resolve_routing(routing, causal)
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    nk = n_regions(lk, region)
    slots = min(topk, nk)
    if key_means is not None and key_mask is not None:
        raise ValueError("route: key_means are the means of every key; they need key_mask=None")
    with torch.no_grad():
        q = routing_precision(q)
        k_means = key_means
        if k_means is None:
            k_means, k_counts = region_means(routing_precision(k), key_mask, region)  # (B, Hkv, nk, Dh)
        empty = None if key_mask is None else (k_counts == 0)[:, None, :]  # (B, 1, nk)
        if kind == "region":
            q_means, _ = region_means(q, query_mask, region)  # (B, H, nq, Dh)
            affinity = torch.einsum("bhqd,bhkd->bqk", _sum_groups(q_means, hkv), k_means)
            return _top(_exclude(affinity, empty), slots)
        gate = _exclude(_token_gate(_sum_groups(q, hkv), k_means, region), empty)  # (B, Lq, nk)
        if not causal:
            return _top(gate, slots)
        if lq == 1 and lk >= 1:  # a decoding step: the same, with its one own region known here
            own = (lk - 1) // region
            gate[..., own:] = -math.inf  # the own region and after (gate is a fresh tensor)
            enough = own >= slots - 1 and empty is None  # as many candidates as slots: none left empty
            others = gate.topk(slots - 1, dim=-1).indices if enough else _top(gate, slots - 1)
            return torch.cat([gate.new_full((b, 1, 1), own, dtype=torch.long), others], dim=-1)
        position = torch.arange(lk - lq, lk, device=q.device)
        own = torch.where(position >= 0, position.div(region, rounding_mode="floor"), -1)  # (Lq,)
        not_before = torch.arange(nk, device=q.device)[None, :] >= own[:, None]  # (Lq, nk)
        others = _top(gate.masked_fill(not_before, -math.inf), slots - 1)  # (B, Lq, S - 1)
        return torch.cat([own.expand(b, lq)[..., None], others], dim=-1)


def routing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype routing computes in for inputs of ``dtype``: float32 for half, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def routing_precision(x: Tensor) -> Tensor:
    """``x`` in the precision routing computes in (:func:`routing_dtype`)."""
    return x.to(routing_dtype(x.dtype))


def _token_gate(q: Tensor, k_means: Tensor, region: int) -> Tensor:
    """(B, Hkv, Lq, Dh) queries . (B, Hkv, nk, Dh) region means, summed over heads: (B, Lq, nk).

    Up to ``region`` queries (a cached step) it takes a product per head and sums the heads,
    which reads the means in place: 6x faster than the einsum at 8,192 cached keys, whose copy
    of the means to (B, nk, Hkv * Dh) costs more than the product. More queries take the einsum,
    one product over Hkv * Dh without the (B, Hkv, Lq, nk) intermediate."""
    if q.shape[2] <= region:
        return (q @ k_means.transpose(-1, -2)).sum(1)  # (B, Hkv, Lq, nk) -> (B, Lq, nk)
    return torch.einsum("bhld,bhnd->bln", q, k_means)


def _sum_groups(q: Tensor, kv_heads: int) -> Tensor:
    """(B, H, L, Dh) -> (B, Hkv, L, Dh): the sum over the query heads sharing each key/value head."""
    b, h, length, dh = q.shape
    return q if h == kv_heads else q.reshape(b, kv_heads, h // kv_heads, length, dh).sum(2)


def _exclude(scores: Tensor, empty: Optional[Tensor]) -> Tensor:
    return scores if empty is None else scores.masked_fill(empty, -math.inf)


def _top(scores: Tensor, n: int) -> Tensor:
    """Indices of the ``n`` best scores along the last dim; -1 where only -inf was left."""
    values, index = scores.topk(n, dim=-1)
    return index.masked_fill(values == -math.inf, -1)


def chosen_regions(routes: Tensor, nk: int) -> Tensor:
    """Routes (B, rows, S), -1 = empty slot -> (B, rows, nk) bool: whether the row chose key region j."""
    chosen = torch.zeros(*routes.shape[:2], nk + 1, dtype=torch.bool, device=routes.device)
    chosen.scatter_(2, routes.masked_fill(routes < 0, nk), True)  # empty slots go to a dropped column
    return chosen[..., :nk]


def routed_mask(
    routes: Tensor, geometry: Geometry, *, key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None
) -> Tensor:
    """The boolean attention mask bi-level routing amounts to, True = attend: a query sees a key
    when its routing chose the key's region, the key is real, and causality and ``mask`` allow it.

    Args:
        routes: from :func:`route`, (B, nq, S) for region routing, (B, Lq, S) for token routing.
        geometry: lengths, region, routing kind and causality of the call.
        key_valid: (B, Lk), True = real key.
        mask: general boolean mask broadcastable to (B, H, Lq, Lk).

    Returns:
        (B, 1, Lq, Lk), or (B, Hm, Lq, Lk) with a per-head ``mask``.
    """
    g = geometry
    chosen = chosen_regions(routes, g.nk)
    if not g.token:
        chosen = chosen.repeat_interleave(g.region, dim=1)[:, : g.lq]  # every query of a region alike
    allowed = chosen.repeat_interleave(g.region, dim=2)[:, None, :, : g.lk]  # (B, 1, Lq, Lk)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    if g.causal:
        allowed = allowed & torch.ones(g.lq, g.lk, dtype=torch.bool, device=routes.device).tril(g.lk - g.lq)
    return allowed if mask is None else allowed & mask
