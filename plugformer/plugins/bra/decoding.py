"""Region sums kept in the KV cache, so that a decoding step routes without re-reading the cache.

Token routing scores each query against the mean key of every region (:func:`.routing.route`).
Recomputed at every decoding step, those means read all L cached keys: per step as much memory
traffic as dense attention, which bi-level routing otherwise avoids (it attends topk * region
keys). The kernel declares ``uses_cache_state``, receives the layer's
:class:`plugformer.core.cache.KVCache` and keeps there the sums of the cache's whole regions
(:data:`SUMS`, (B, Hkv, n_whole, Dh) in the routing precision). A step sums only the regions
completed since the last step (one region of ``region`` keys every ``region`` steps) and the
partial last region (fewer than ``region`` keys), so routing reads n_regions summaries and at
most 2 * region keys, not L.

Exact: the kept sums are computed by the same :func:`.routing.whole_region_sums` over the same
keys as the stateless path, only in chunks, so the means, and the routes, are the ones recomputing
gives (``tests/plugins/bra/test_decoding.py`` compares them bit for bit). Valid only where every
cached key counts in its region's mean: no mask (a key-padding mask, left-padded prompts, leaves
keys out and rolls rows) and self-attention over a growing cache (not a static cross-attention
cache); the kernel checks this (:func:`usable`) and takes the stateless path otherwise.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from plugformer.core.cache import KVCache
from plugformer.plugins.bra.routing import means_from_sums, routing_precision, whole_region_sums

#: State names in ``KVCache.state``: the sums (B, Hkv, n_whole, Dh) of the whole regions summed
#: so far, and the region size they were cut with.
SUMS = "bra.region_sums"
REGION = "bra.region"


def usable(cache: Optional[KVCache], *, token: bool, causal: bool, masked: bool, lq: int, lk: int) -> bool:
    """Whether a call may route from the cache's kept sums: causal token routing of a growing
    self-attention cache (``lq <= lk``: a prefill or a decoding step), without any mask."""
    return (cache is not None and not cache.static and token and causal and not masked and lq <= lk
            and len(cache) == lk)


def cached_key_means(k: Tensor, state: dict[str, Any], region: int) -> Tensor:
    """Region means of the cached keys, equal to ``region_means(routing_precision(k), None,
    region)``, from the sums kept in ``state``, which this updates.

    Args:
        k: (B, Hkv, L, Dh) every cached key (the cache's ``k``); the keys the state has summed
            must not have changed since (a cache only appends, and reorders its rows and its
            state together).
        state: the cache's ``state`` dictionary.
        region: tokens per region.

    Returns:
        means (B, Hkv, ceil(L / region), Dh) in the routing precision.
    """
    whole = k.shape[2] // region
    sums = state.get(SUMS)
    if sums is None or state.get(REGION) != region or not _continues(sums, k, whole):
        sums = whole_region_sums(routing_precision(k[:, :, :0]), region)  # restart: (B, Hkv, 0, Dh)
    done = sums.shape[2]
    if whole > done:  # regions completed since the last call
        new = whole_region_sums(routing_precision(k[:, :, done * region : whole * region]), region)
        sums = torch.cat([sums, new], dim=2)  # (B, Hkv, whole, Dh)
    state[SUMS], state[REGION] = sums, region
    means, _ = means_from_sums(sums, routing_precision(k[:, :, whole * region :]), region)
    return means


def _continues(sums: Tensor, k: Tensor, whole: int) -> bool:
    """Whether ``sums`` can be the kept sums of the first regions of ``k``."""
    return (sums.shape[:2] == k.shape[:2] and sums.shape[3] == k.shape[3] and sums.shape[2] <= whole
            and sums.device == k.device and sums.dtype == routing_precision(k[:, :, :0]).dtype)
