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


def zero_outputs(modules) -> None:
    """Break ``modules`` on purpose: each returns zeros of its output's shape (a forward hook)."""
    for module in modules:
        module.register_forward_hook(lambda _module, _inputs, output: torch.zeros_like(output))


def _task_batch(task: str, vocab: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of a task that needs a specific part to be solved.

    ``lookback``: random tokens, each position's target is the token before it; it needs
    attention that can tell positions apart (a causal model without positional information
    can only average the past). ``pairs``: the target at position t is a fixed random table of
    (token t-1, token t); an interaction of two tokens that attention's weighted sum does not
    compute, so it needs the feed-forward network."""
    x = torch.randint(0, vocab, (32, 16), generator=generator)
    if task == "lookback":
        return x, x[:, :-1]
    table = torch.randint(0, vocab, (vocab * vocab,), generator=torch.Generator().manual_seed(0))
    return x, table[x[:, :-1] * vocab + x[:, 1:]]


def _task_loss(model: nn.Module, task: str, vocab: int, generator: torch.Generator,
               encdec: bool) -> Tensor:
    x, target = _task_batch(task, vocab, generator)
    logits = (model(x, x) if encdec else model(x))[:, 1:]  # the first position has no target
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def _learned_losses(working: nn.Module, broken: nn.Module, task: str, steps: int, *,
                    vocab: int, encdec: bool = False, aux_weight: float = 0.0) -> tuple[float, float]:
    losses = []
    for model in (working, broken):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(steps):
            loss = _task_loss(model, task, vocab, generator, encdec)
            total = loss + aux_weight * model.aux_loss() if aux_weight else loss
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        with torch.no_grad():
            held_out = torch.Generator().manual_seed(99)
            losses.append(_task_loss(model.eval(), task, vocab, held_out, encdec).item())
    return losses[0], losses[1]


@pytest.fixture
def learned_losses() -> Callable[..., tuple[float, float]]:
    """``learned_losses(working, broken, task, steps, vocab=, encdec=False, aux_weight=0)``:
    both models trained alike (AdamW lr 1e-2, fresh batches of 32 x 16 each step) on ``task``
    (``lookback`` or ``pairs``, see ``_task_batch``); their held-out losses. A test asserts the
    working part reaches a loss its broken twin (the part's key computation zeroed with
    ``zero_outputs``, or the part removed) does not."""
    return _learned_losses


@pytest.fixture
def zeroed() -> Callable[..., None]:
    """``zeroed(modules)``: see :func:`zero_outputs`."""
    return zero_outputs
