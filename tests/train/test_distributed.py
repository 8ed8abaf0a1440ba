"""Process-group set-up, block discovery and wrapping, in one process (multi-process runs are
in test_multiprocess.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugformer
from plugformer.core.interfaces import Block
from plugformer.train.distributed import (Dist, PeerFailed, agree, find_blocks, gradient_sync,
                                          is_peer_loss, setup, unwrap, wrap)


@pytest.fixture
def alone(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_blocks_of_an_encoder_decoder_are_its_encoder_then_decoder_layers():
    model = plugformer.build("transformer_tiny(layers=2)", vocab=16)
    expected = [*model.stack.encoder.layers, *model.stack.decoder.layers]
    assert [id(b) for b in find_blocks(model)] == [id(b) for b in expected]


def test_blocks_of_a_language_model_are_its_decoder_layers():
    model = plugformer.build("gpt_tiny(layers=3)", vocab=16)
    assert [id(b) for b in find_blocks(model)] == [id(b) for b in model.decoder.layers]


class _Outer(Block):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Inner()

    def forward(self, x, **kwargs):
        return self.inner(x)


class _Inner(Block):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)

    def forward(self, x, **kwargs):
        return self.proj(x)


def test_a_block_inside_a_block_stays_in_its_parents_unit():
    model = nn.Sequential(_Outer(), nn.ModuleList([_Inner()]))
    found = find_blocks(model)
    assert [type(b) for b in found] == [_Outer, _Inner]
    assert found[0] is model[0] and found[1] is model[1][0]


def test_alone_there_is_no_process_group_and_nothing_is_wrapped(alone):
    where = setup("cpu")
    assert (where.rank, where.world, where.is_main, where.distributed) == (0, 1, True, False)
    model = nn.Linear(2, 2)
    for strategy in ("ddp", "fsdp"):
        assert wrap(model, strategy, where) is model
        assert unwrap(model) is model
    with pytest.raises(ValueError, match="strategy must be one of ddp, fsdp, got 'zero'"):
        wrap(model, "zero", where)


def test_gradient_sync_on_a_plain_module_accumulates_as_usual():
    model = nn.Linear(2, 1)
    x = torch.ones(1, 2)
    for enabled in (False, True):
        with gradient_sync(model, enabled):
            model(x).sum().backward()
    assert torch.equal(model.weight.grad, 2 * torch.ones(1, 2))


def test_a_rank_out_of_range_is_refused_before_any_group_forms(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match=r"needs RANK in \[0, 2\), got RANK=5"):
        setup("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK must be an integer, got 'one'"):
        setup("cpu")


def test_agree_alone_raises_this_ranks_own_error():
    agree(Dist(), None)
    with pytest.raises(KeyError, match="mine"):
        agree(Dist(), KeyError("mine"))


def test_peer_losses_are_told_apart_from_a_ranks_own_errors():
    assert is_peer_loss(PeerFailed("rank 1 failed"))
    assert is_peer_loss(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:4065"))
    assert not is_peer_loss(RuntimeError("shape mismatch"))
