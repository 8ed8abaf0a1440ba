"""Look at what bi-level routing attention chose: record route maps and draw them as heat maps.

    with record_routes(model) as routes:
        model(src, tgt)
    plot_routes(routes, "routes.png")

A route map is (query regions, key regions): the share of the queries of each query region that
attend each key region, averaged over the batch (1 everywhere a region-routed layer chose, a
fraction for token routing, where the queries of a region choose separately).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Optional

from torch import Tensor, nn

from plugformer.plugins.bra import BiLevelRoutingAttention


@contextlib.contextmanager
def record_routes(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the route map of every ``bra`` kernel of ``model`` while the block runs.

    Yields a dict, module name -> route map (nq, nk), filled by each forward (the last one wins).
    """
    routes: dict[str, Tensor] = {}
    kernels = {name: m for name, m in model.named_modules() if isinstance(m, BiLevelRoutingAttention)}
    if not kernels:
        raise ValueError("the model has no bra attention kernel to record; build it with attn=bra(...)")

    def keeper(name: str):
        def hook(module: BiLevelRoutingAttention, args, output) -> None:
            routes[name] = module.last_route_map

        return hook

    handles = []
    try:
        for name, kernel in kernels.items():
            kernel.record_routes = True
            handles.append(kernel.register_forward_hook(keeper(name)))
        yield routes
    finally:
        for handle in handles:
            handle.remove()
        for kernel in kernels.values():
            kernel.record_routes = False
            kernel.last_route_map = None


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
