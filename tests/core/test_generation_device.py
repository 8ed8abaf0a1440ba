"""Seeded sampling follows the device of the logits it samples from (issue 12, item 8)."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.core import generation


class _Session:
    """A decoding session with fixed logits (B, V) that records when it started."""

    def __init__(self, logits: torch.Tensor, events: list) -> None:
        self.logits = logits
        self.events = events

    def start(self) -> torch.Tensor:
        self.events.append(("start", None))
        return self.logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_seeded_generator_is_made_on_the_logits_device_after_they_exist(monkeypatch) -> None:
    events: list = []
    real = torch.Generator

    def recording_generator(device="cpu"):
        events.append(("generator", torch.device(device)))
        return real(device=device)

    draws: list = []
    real_multinomial = torch.multinomial

    def recording_multinomial(probs, n, *, generator=None):
        draws.append((probs.device, generator.device))
        return real_multinomial(probs, n, generator=generator)

    monkeypatch.setattr(torch, "Generator", recording_generator)
    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    logits = torch.randn(3, 11)
    generation.sample(_Session(logits, events), max_new_tokens=4, temperature=1.0, seed=5)
    assert events == [("start", None), ("generator", logits.device)]
    assert len(draws) == 4 and all(probs == gen for probs, gen in draws)


def test_same_seed_same_draws_and_pick_honours_a_generator_elsewhere() -> None:
    logits = torch.randn(4, 50)
    first = generation.sample(_Session(logits, []), max_new_tokens=6, temperature=1.0, seed=3)
    again = generation.sample(_Session(logits, []), max_new_tokens=6, temperature=1.0, seed=3)
    torch.testing.assert_close(first, again)
    direct = [generation.pick(logits, temperature=1.0, generator=g) for g in [torch.Generator().manual_seed(3)] * 6]
    torch.testing.assert_close(first, torch.stack(direct, dim=1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_sampling_on_cuda_is_reproducible() -> None:
    model = plugformer.build("gpt_tiny", device="cuda").eval()
    prompt = torch.randint(0, 256, (2, 5), device="cuda")
    first = model.generate(prompt, 8, temperature=1.0, top_k=20, seed=7)
    again = model.generate(prompt, 8, temperature=1.0, top_k=20, seed=7)
    assert first.device.type == "cuda"
    torch.testing.assert_close(first, again)
    logits = torch.randn(2, 30, device="cuda")
    from_cpu = generation.pick(logits, temperature=1.0, generator=torch.Generator().manual_seed(1))
    expected = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=torch.Generator().manual_seed(1))[:, 0]
    assert from_cpu.device.type == "cuda"
    torch.testing.assert_close(from_cpu.cpu(), expected)
