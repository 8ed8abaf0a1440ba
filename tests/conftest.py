"""Test-wide settings and fixtures."""

import functools
from typing import Callable, Optional

import pytest
import torch
from torch import Tensor, nn

# Tiny models on a shared 2-core machine run many times faster on one thread than on two
# threads that wait for each other.
torch.set_num_threads(1)


def _cached_logits(model: nn.Module, tokens: Tensor, *, prefix: int = 1,
                   memory: Optional[Tensor] = None) -> Tensor:
    if memory is None:  # decoder-only
        run = functools.partial(model, caches=model.new_caches())
    else:
        run = functools.partial(model.decode, memory=memory, caches=model.new_caches())
    steps = [run(tokens[:, :prefix])]
    steps += [run(tokens[:, t : t + 1]) for t in range(prefix, tokens.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.fixture
def cached_logits() -> Callable[..., Tensor]:
    """``cached_logits(model, tokens, prefix=1, memory=None)``: the logits of ``tokens`` decoded
    with the KV cache, the first ``prefix`` at once and then one at a time, for comparing with
    one uncached pass. ``memory`` (the encoder output) for encoder-decoders."""
    return _cached_logits


def _train_losses(model: nn.Module, ids: Tensor, steps: int, *, src: Optional[Tensor] = None,
                  aux_weight: float = 0.0) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        logits = model(ids[:, :-1]) if src is None else model(src, ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        total = loss + aux_weight * model.aux_loss() if aux_weight else loss
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def train_losses() -> Callable[..., list[float]]:
    """``train_losses(model, ids, steps, src=None, aux_weight=0)``: AdamW (lr 3e-3) steps of
    next-token prediction on ``ids`` (targets ``ids[:, 1:]``, the decoder reading ``src`` for an
    encoder-decoder), ``aux_weight`` times ``model.aux_loss()`` added; the task losses per step."""
    return _train_losses


def pytest_configure(config: pytest.Config) -> None:
    # The kit's pytest plugin comes from plugformer's pytest11 entry point once the package's
    # metadata is installed; a checkout run without that install registers it here.
    import plugformer.testing.pytest_plugin as kit_plugin

    if not config.pluginmanager.is_registered(kit_plugin):
        config.pluginmanager.register(kit_plugin, "plugformer")
