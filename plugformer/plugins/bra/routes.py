"""Look at what bi-level routing attention chose: record route maps and draw them as heat maps.

    with record_routes(model) as routes:
        model(src, tgt)
    plot_routes(routes, "routes.png")

A route map is (query regions, key regions): the share of the queries of each query region that
attend each key region, averaged over the batch (1 everywhere a region-routed layer chose, a
fraction for token routing, where the queries of a region choose separately). The recording
is the caller's: forward hooks that live as long as the ``with`` block, no kernel state.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from plugformer.hooks import hookimpl
from plugformer.plugins.bra.kernel import BiLevelRoutingAttention
from plugformer.plugins.bra.routing import n_regions


@contextlib.contextmanager
def record_routes(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the route map of every ``bra`` kernel of ``model`` while the block runs.

    A forward hook on each kernel asks it which regions it routed to
    (:meth:`BiLevelRoutingAttention.route`, recomputed from the call's q, k, mask and causal
    flag) and keeps the :func:`route_map`; the hooks are removed when the block ends. The kernels keep no
    state.

    Yields:
        a dict, module name -> route map (nq, nk), filled by each forward (the last one wins).

    Raises:
        ValueError: ``model`` has no ``bra`` kernel.
    """
    routes: dict[str, Tensor] = {}
    kernels = {name: m for name, m in model.named_modules() if isinstance(m, BiLevelRoutingAttention)}
    if not kernels:
        raise ValueError("the model has no bra attention kernel to record; build it with attn=bra(...)")

    def keeper(name: str):
        def hook(kernel: BiLevelRoutingAttention, args: tuple, kwargs: dict, output: Tensor) -> None:
            call = inspect.signature(kernel.forward).bind(*args, **kwargs).arguments
            q, k, causal = call["q"], call["k"], call.get("causal", False)
            chosen = kernel.route(q, k, mask=call.get("mask"), causal=causal)
            geometry = kernel.geometry(q, k, causal=causal)
            routes[name] = route_map(chosen, region=kernel.region, lq=geometry.lq, lk=geometry.lk,
                                     token=geometry.token)

        return hook

    handles = [kernel.register_forward_hook(keeper(name), with_kwargs=True) for name, kernel in kernels.items()]
    try:
        yield routes
    finally:
        for handle in handles:
            handle.remove()


def route_map(routes: Tensor, *, region: int, lq: int, lk: int, token: bool) -> Tensor:
    """Share of the queries of each query region that attend each key region, (nq, nk) float.

    Query regions are cut by query position (Lk - Lq + i for token routing, so that a cached
    decoding step lands in its own region); averaged over the batch. For plots.
    """
    nk = n_regions(lk, region)
    if token:
        position = torch.arange(lk - lq, lk, device=routes.device).clamp_min(0)
        query_region = position.div(region, rounding_mode="floor")  # (Lq,)
        nq = int(query_region.max()) + 1
        counts = torch.ones_like(query_region).expand(routes.shape[0], lq)
    else:
        nq = routes.shape[1]
        query_region = torch.arange(nq, device=routes.device)
        counts = torch.full((routes.shape[0], nq), region, device=routes.device)
        counts[:, -1] = lq - region * (nq - 1)
    heat = torch.zeros(nq, nk + 1, device=routes.device)
    chosen = routes.masked_fill(routes < 0, nk)  # empty slots go to a dropped column
    rows = query_region[None, :, None].expand_as(chosen)
    weight = counts[:, :, None].expand_as(chosen).to(heat.dtype)
    heat.index_put_((rows.reshape(-1), chosen.reshape(-1)), weight.reshape(-1), accumulate=True)
    queries = torch.zeros(nq, device=routes.device).index_add_(
        0, query_region, counts.sum(0).to(heat.dtype)
    )
    return heat[:, :nk] / queries.clamp_min(1)[:, None]


def plot_routes(routes: dict[str, Tensor], path: str | Path, *, n_regions: Optional[int] = None) -> Path:
    """Draw one heat map per layer (query region x key region) into a PNG file.

    Args:
        routes: module name -> route map (nq, nk), as :func:`record_routes` yields.
        path: where to write the PNG.
        n_regions: show at most this many query and key regions (the first ones). Default: all.

    Returns:
        the path written.
    """
    if not routes:
        raise ValueError("plot_routes: no routes to draw (did the model run inside record_routes?)")
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    except ImportError as err:
        raise ImportError("plot_routes needs matplotlib: pip install 'plugformer[plot]'") from err
    path = Path(path)
    columns = min(4, len(routes))
    rows = math.ceil(len(routes) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(routes) :]:
        ax.axis("off")
    for ax, (name, heat) in zip(axes.flat, routes.items()):
        heat = heat.detach().float().cpu()
        if n_regions is not None:
            heat = heat[:n_regions, :n_regions]
        image = ax.imshow(heat.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(_short_name(name), fontsize=8)
        ax.set_xlabel("key region", fontsize=8)
        ax.set_ylabel("query region", fontsize=8)
        ax.tick_params(labelsize=7)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="share of queries")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _short_name(module_name: str) -> str:
    """'stack.decoder.layers.0.cross_attn.kernel' -> 'decoder.0.cross_attn'."""
    name = module_name.removeprefix("stack.").removesuffix(".kernel").replace("layers.", "")
    return name or "bra"


@hookimpl
def plugformer_model_figures(model: nn.Module, run: Callable[[nn.Module], Any],
                             directory: Path) -> Optional[dict[str, Path]]:
    """The route map of every ``bra`` layer of ``model`` on the caller's batch, for reports;
    None for a model without ``bra``."""
    if not any(isinstance(m, BiLevelRoutingAttention) for m in model.modules()):
        return None
    with record_routes(model) as routes:
        run(model)
    return {"route map": plot_routes(routes, Path(directory) / "routes.png")}
