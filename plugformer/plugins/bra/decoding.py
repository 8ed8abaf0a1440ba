"""Region means kept in the KV cache, so that a decoding step routes without re-reading the cache.

Token routing scores each query against the mean key of every region (:func:`.routing.route`).
Recomputed at every decoding step, those means read all L cached keys: per step as much memory
traffic as dense attention, which bi-level routing otherwise avoids (it attends topk * region
keys). The kernel declares ``uses_cache_state``, receives the layer's
:class:`plugformer.core.cache.KVCache` and keeps there the means of the cache's regions
(:data:`MEANS`, (B, Hkv, room, Dh) in the routing precision, grown as the cache grows): a whole
region's mean is computed once, when the region is complete (``region`` keys every ``region``
steps), and a step rewrites only the partial last region's (fewer than ``region`` keys), so
routing reads n_regions summaries and at most 2 * region keys, not L.

Exact: the kept means are computed by the same :func:`.routing.whole_region_sums` and
:func:`.routing.means_from_sums` over the same keys as the stateless path, only in chunks, so the
means, and the routes, are the ones recomputing gives (``tests/plugins/bra/test_decoding.py``
compares them bit for bit). Valid only where every cached key counts in its region's mean: no
mask (a key-padding mask, left-padded prompts, leaves keys out and rolls rows) and
self-attention over a growing cache (not a static cross-attention cache); the kernel checks this
(:func:`usable`) and takes the stateless path otherwise.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from plugformer.core.cache import KVCache
from plugformer.plugins.bra.routing import means_from_sums, routing_dtype, routing_precision, whole_region_sums

#: State names in ``KVCache.state``: the region means (B, Hkv, room, Dh), the number of whole
#: regions among them (the slot after those holds the partial region's mean of the last call),
#: and the region size they were cut with.
MEANS = "bra.region_means"
WHOLE = "bra.whole_regions"
REGION = "bra.region"


def usable(cache: Optional[KVCache], *, token: bool, causal: bool, masked: bool, lq: int, lk: int) -> bool:
    """Whether a call may route from the cache's kept means: causal token routing of a growing
    self-attention cache (``lq <= lk``: a prefill or a decoding step), without any mask."""
    return (cache is not None and not cache.static and token and causal and not masked and lq <= lk
            and len(cache) == lk)


def cached_key_means(k: Tensor, state: dict[str, Any], region: int) -> Tensor:
    """Region means of the cached keys, equal to ``region_means(routing_precision(k), None,
    region)[0]``, from the means kept in ``state``, which this updates.

    Args:
        k: (B, Hkv, L, Dh) every cached key (the cache's ``k``); the keys of the regions the
            state has kept must not have changed since (a cache only appends, and reorders its
            rows and its state together).
        state: the cache's ``state`` dictionary.
        region: tokens per region.

    Returns:
        means (B, Hkv, ceil(L / region), Dh) in the routing precision, a view of the kept ones.
    """
    whole, tail = divmod(k.shape[2], region)
    means, done = state.get(MEANS), state.get(WHOLE, 0)
    if means is None or state.get(REGION) != region or not _continues(means, done, k, whole):
        means, done = None, 0  # a fresh cache, another region size, or a cache changed under it
    n = whole + (tail > 0)
    if means is None or means.shape[2] < n:
        room = max(n, 2 * (0 if means is None else means.shape[2]))
        grown = k.new_empty(*k.shape[:2], room, k.shape[3], dtype=routing_dtype(k.dtype))
        if done:
            grown[:, :, :done] = means[:, :, :done]
        means = grown
    if whole > done:  # regions completed since the last call
        sums = whole_region_sums(routing_precision(k[:, :, done * region : whole * region]), region)
        means[:, :, done:whole] = means_from_sums(sums, k[:, :, :0], region)[0]
    if tail:  # the partial region's mean, divided as means_from_sums does (IEEE division, exact)
        last = routing_precision(k[:, :, whole * region :])  # (B, Hkv, tail, Dh)
        torch.div(last.sum(2, keepdim=True), tail, out=means[:, :, whole : whole + 1])
    state[MEANS], state[WHOLE], state[REGION] = means, whole, region
    return means[:, :, :n]


def _continues(means: Tensor, done: int, k: Tensor, whole: int) -> bool:
    """Whether ``means`` can be the kept means of the first ``done`` regions of ``k``."""
    return (means.shape[:2] == k.shape[:2] and means.shape[3] == k.shape[3] and done <= whole
            and means.device == k.device and means.dtype == routing_dtype(k.dtype))

