"""How well bi-level routing routes: route recall, routing entropy and region load per layer.

Neither BiFormer's, MoBA's nor NSA's published code reports these. Three numbers per ``bra``
layer, measured from outside the kernel with forward hooks (the kernels keep no state):

* **route recall**, per head: the share of exact softmax attention's probability mass that falls
  on keys of the regions the router chose. Exact attention is computed densely, for a sample of
  queries, with the kernel's scale, masks, causality and score bias; the chosen keys are those
  :func:`.routing.routed_mask` allows. 1.0 when ``topk`` covers every region; the mass a sparse
  layer drops when below.
* **routing entropy**: the entropy of the empirical distribution of chosen regions, divided by
  its largest value, ``log(real regions)``: every (query, chosen region) pair counts once (a
  region-routed choice counts once for each real query of its query region), over the real
  regions (at least one real key) of every row of the batch, each (row, region) a bin. 1 = every
  region chosen equally often, 0 = one region takes every choice; 1 when there is a single bin.
  The router's own scores are not used: :meth:`.kernel.BiLevelRoutingAttention.route` returns
  choices only, and this measures what the kernel attends.
* **region load**: the coefficient of variation (population std / mean) of the same choice
  counts over the same bins: 0 = perfectly even, large = a few regions serve most queries
  (the imbalance a region-parallel kernel pays for). Causal token routing is uneven by
  construction: an early region is a candidate for every later query.

Routing is shared by all the heads of a layer (both routings sum the scores over heads), so
entropy and load are per layer and recall per head.

    with route_stats(model) as stats:
        model(ids)
    print(stats["stack.decoder.layers.0.self_attn.kernel"].recall)

Shapes: B batch, H query heads, Hkv key/value heads, Lq queries, Lk keys, S route slots,
nk key regions, n sampled queries.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from plugformer.core.attention import repeat_kv
from plugformer.core.interfaces import ScoreBias
from plugformer.core.masks import masked_softmax
from plugformer.hooks import hookimpl
from plugformer.plugins.bra.kernel import BiLevelRoutingAttention, split_mask
from plugformer.plugins.bra.routing import Geometry, chosen_regions, region_shift, roll_rows

__all__ = ["LayerStats", "route_recall", "choice_counts", "routing_entropy", "region_load",
           "route_stats", "routing_stats"]


@dataclass(frozen=True)
class LayerStats:
    """The routing diagnostics of one ``bra`` layer, over every call it made.

    Attributes:
        name: the kernel's module name in the model.
        recall: mean route recall per head, (H,) float, over the sampled queries.
        entropy: normalised entropy of the chosen regions, in [0, 1].
        load: coefficient of variation of the choice counts over real regions (0 = even).
        queries: sampled queries per head that the recall averages (rows of every call).
        regions: real (row, region) bins that entropy and load count over.
        topk: the kernel's ``topk``.
    """

    name: str
    recall: Tensor
    entropy: float
    load: float
    queries: int
    regions: int
    topk: int


def route_recall(q: Tensor, k: Tensor, routes: Tensor, geometry: Geometry, *, scale: float,
                 key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                 score_bias: Optional[ScoreBias] = None,
                 rows: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Route recall of query rows ``rows``: the exact attention mass on their chosen regions.

    Args:
        q: (B, H, Lq, Dh); k: (B, Hkv, Lk, Dh), in the coordinates ``routes`` refer to.
        routes: from :func:`.routing.route`, (B, nq, S) region routing or (B, Lq, S) token routing.
        geometry: lengths, region, routing kind and causality of the call.
        scale: multiplies q k^T.
        key_valid: (B, Lk), True = real key; mask: boolean (B, Hm, Lq, Lk), True = may attend.
        score_bias: ``score_bias(q_idx, k_idx) -> (H, *shape)``, called with indices as the
            kernel's paths call it.
        rows: (n,) query indices to measure; None = every query.

    Returns:
        recall (B, H, n) in [0, 1], and (B, H, n) bool: whether the row has a key to attend
        (rows without one have recall 0 and should not be averaged).
    """
    g = geometry
    rows = torch.arange(g.lq, device=q.device) if rows is None else rows.to(q.device)
    q, k = _exact_precision(q[:, :, rows]), _exact_precision(k)
    scores = q @ repeat_kv(k, q.shape[1]).transpose(-2, -1) * scale  # (B, H, n, Lk)
    key_idx = torch.arange(g.lk, device=q.device)
    if score_bias is not None:
        scores = scores + score_bias(rows[:, None], key_idx[None, :]).to(scores.dtype)
    allowed = torch.ones(1, 1, rows.numel(), g.lk, dtype=torch.bool, device=q.device)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    if g.causal:
        allowed = allowed & (key_idx[None, :] <= rows[:, None] + g.lk - g.lq)
    if mask is not None:
        allowed = allowed & mask[:, :, rows]
    exact = masked_softmax(scores, allowed.expand_as(scores))  # (B, H, n, Lk)
    chosen = chosen_regions(routes, g.nk)  # (B, nq or Lq, nk)
    chosen = chosen[:, rows if g.token else rows.div(g.region, rounding_mode="floor")]  # (B, n, nk)
    chosen = chosen.repeat_interleave(g.region, dim=2)[:, None, :, : g.lk]  # (B, 1, n, Lk)
    recall = (exact * chosen).sum(-1).float()
    return recall, allowed.expand_as(scores).any(-1)


def _exact_precision(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def choice_counts(routes: Tensor, geometry: Geometry, *,
                  query_valid: Optional[Tensor] = None) -> Tensor:
    """How many real queries chose each key region: (B, nk) float.

    A region-routed row counts once per real query of its query region; ``query_valid`` (B, Lq),
    True = a real query (None = all real). Empty slots (-1) count nowhere.
    """
    g = geometry
    chosen = chosen_regions(routes, g.nk).to(torch.float32)  # (B, rows, nk)
    valid = torch.ones(routes.shape[0], g.lq, device=routes.device) if query_valid is None \
        else query_valid.to(torch.float32)
    if not g.token:
        pad = g.nq * g.region - g.lq
        valid = nn.functional.pad(valid, (0, pad)).view(-1, g.nq, g.region).sum(-1)  # (B, nq)
    return torch.einsum("brn,br->bn", chosen, valid)


def real_regions(key_valid: Optional[Tensor], geometry: Geometry, batch: int) -> Tensor:
    """Which key regions hold at least one real key: (B, nk) bool."""
    g = geometry
    if key_valid is None:
        return torch.ones(batch, g.nk, dtype=torch.bool)
    pad = g.nk * g.region - g.lk
    return nn.functional.pad(key_valid, (0, pad)).view(-1, g.nk, g.region).any(-1)


def routing_entropy(counts: Tensor) -> float:
    """Entropy of the distribution ``counts / counts.sum()`` over its bins, divided by
    log(bins): 1 = uniform, 0 = one bin; 1 for a single bin and 0 for no choice at all.
    counts: (N,) non-negative, one entry per real (row, region) bin."""
    if counts.numel() <= 1:
        return 1.0
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    p = counts.double() / total
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return float(entropy / math.log(counts.numel()))


def region_load(counts: Tensor) -> float:
    """Coefficient of variation of ``counts`` (N,): population std / mean; 0 = even, 0 when
    nothing was chosen."""
    mean = float(counts.double().mean()) if counts.numel() else 0.0
    if mean <= 0:
        return 0.0
    return float(counts.double().std(correction=0)) / mean


@dataclass
class _Totals:
    topk: int
    recall: Optional[Tensor] = None
    queries: Optional[Tensor] = None
    counts: list[Tensor] = field(default_factory=list)

    def add(self, recall: Tensor, measured: Tensor, counts: Tensor) -> None:
        recall_sum = (recall * measured).sum((0, 2)).cpu().double()  # (H,)
        queries = measured.sum((0, 2)).cpu().double()
        self.recall = recall_sum if self.recall is None else self.recall + recall_sum
        self.queries = queries if self.queries is None else self.queries + queries
        self.counts.append(counts.cpu())

    def stats(self, name: str) -> LayerStats:
        counts = torch.cat(self.counts) if self.counts else torch.zeros(0)
        recall = torch.zeros(0) if self.recall is None else self.recall
        queries = torch.zeros(0) if self.queries is None else self.queries
        return LayerStats(
            name=name, recall=(recall / queries.clamp_min(1)).float(),
            entropy=routing_entropy(counts), load=region_load(counts),
            queries=int(queries.max()) if queries.numel() else 0, regions=counts.numel(), topk=self.topk,
        )


def _measure(kernel: BiLevelRoutingAttention, call: dict[str, Any], queries: Optional[int],
             generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Recall (B, H, n), measured rows (B, H, n) and real-bin counts (N,) of one kernel call,
    in the coordinates :meth:`BiLevelRoutingAttention.route` uses (left-padded rows rolled)."""
    q, k, mask, causal = call["q"], call["k"], call.get("mask"), call.get("causal", False)
    routes = kernel.route(q, k, mask=mask, causal=causal)
    geometry = kernel.geometry(q, k, causal=causal)
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    key_valid, general = split_mask(mask, b, h, lq, lk)
    self_attention = not kernel.cross and lq == lk
    shift = None if general is not None else region_shift(key_valid, kernel.region)
    if shift is not None:
        k, key_valid = roll_rows(k, shift, 2), roll_rows(key_valid, shift, 1)
        if self_attention:
            q = roll_rows(q, shift, 2)
    rows = None
    if queries is not None and queries < lq:
        rows = torch.randperm(lq, generator=generator)[:queries].sort().values
    recall, measured = route_recall(q, k, routes, geometry, scale=kernel.scale, key_valid=key_valid,
                                    mask=general, score_bias=call.get("score_bias"), rows=rows)
    query_valid = key_valid if self_attention else None
    if query_valid is not None:
        picked = query_valid if rows is None else query_valid[:, rows.to(query_valid.device)]
        measured = measured & picked[:, None, :]
    counts = choice_counts(routes, geometry, query_valid=query_valid)  # (B, nk)
    real = real_regions(key_valid, geometry, b).to(counts.device)
    return recall, measured, counts[real]


@contextlib.contextmanager
def route_stats(model: nn.Module, *, queries: Optional[int] = 64,
                seed: int = 0) -> Iterator[dict[str, LayerStats]]:
    """Measure route recall, routing entropy and region load of every ``bra`` kernel of
    ``model`` while the block runs; the dict fills when the block ends.

    A forward hook on each kernel re-routes the call's q and k
    (:meth:`BiLevelRoutingAttention.route`) and computes exact attention for ``queries``
    sampled query rows per call; every call inside the block adds to the totals. The hooks are
    removed when the block ends.

    Args:
        model: a module holding ``bra`` kernels.
        queries: query rows sampled per call for the recall (uniformly, without replacement);
            None = every row. Default: 64.
        seed: seed of the sample.

    Yields:
        a dict, kernel module name -> `LayerStats`, filled on exit, in module order; a kernel
        that never ran is absent.

    Raises:
        ValueError: ``model`` has no ``bra`` kernel, or ``queries < 1``.
    """
    if queries is not None and queries < 1:
        raise ValueError(f"route_stats: queries must be >= 1 or None (every query), got {queries}")
    kernels = {name: m for name, m in model.named_modules() if isinstance(m, BiLevelRoutingAttention)}
    if not kernels:
        raise ValueError("the model has no bra attention kernel to measure; build it with attn=bra(...)")
    generator = torch.Generator().manual_seed(seed)
    totals = {name: _Totals(topk=kernel.topk) for name, kernel in kernels.items()}

    def keeper(name: str) -> Callable[..., None]:
        def hook(kernel: BiLevelRoutingAttention, args: tuple, kwargs: dict, output: Tensor) -> None:
            call = inspect.signature(kernel.forward).bind(*args, **kwargs).arguments
            with torch.no_grad():
                totals[name].add(*_measure(kernel, call, queries, generator))

        return hook

    stats: dict[str, LayerStats] = {}
    handles = [kernel.register_forward_hook(keeper(name), with_kwargs=True) for name, kernel in kernels.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
    stats.update({name: total.stats(name) for name, total in totals.items() if total.counts})


def routing_stats(model: nn.Module, inputs: Union[Tensor, Callable[[nn.Module], Any]], *,
                  queries: Optional[int] = 64, seed: int = 0) -> list[LayerStats]:
    """Route recall, routing entropy and region load of every ``bra`` layer of ``model`` on
    ``inputs``, without gradients: one `LayerStats` per kernel that ran, in module order.

    Args:
        model: a module holding ``bra`` kernels.
        inputs: token ids (B, L) for ``model(inputs)``, or a function that runs the model, e.g.
            a task batch's ``batch.logits``.
        queries, seed: as :func:`route_stats`.

    Raises:
        ValueError: as :func:`route_stats`.
    """
    run = inputs if callable(inputs) else (lambda m: m(inputs))
    with torch.no_grad(), route_stats(model, queries=queries, seed=seed) as stats:
        run(model)
    return list(stats.values())


@hookimpl
def plugformer_model_diagnostics(model: nn.Module, run: Callable[[nn.Module], Any]) -> Optional[dict[str, float]]:
    """BRA's columns in a comparison: route recall, routing entropy and region load, averaged
    over the model's ``bra`` layers (and heads); None for a model without ``bra``."""
    if not any(isinstance(m, BiLevelRoutingAttention) for m in model.modules()):
        return None
    layers = routing_stats(model, run)
    if not layers:
        return None
    return {
        "route_recall": sum(float(s.recall.mean()) for s in layers) / len(layers),
        "routing_entropy": sum(s.entropy for s in layers) / len(layers),
        "region_load": sum(s.load for s in layers) / len(layers),
    }
