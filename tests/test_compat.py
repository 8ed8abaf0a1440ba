"""What the 0.1.0 release wrote still means the same model today.

``tests/data`` holds what 0.1.0 produced, written once by that release and never regenerated:
the canonical spec and state-dict shapes of every model preset (``presets-0.1.0.json``), two
checkpoints saved with ``plugformer.save`` and the logits those models gave on fixed inputs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import plugformer

DATA = Path(__file__).parent / "data"
PRESETS = json.loads((DATA / "presets-0.1.0.json").read_text())


def test_every_preset_of_the_release_is_still_registered():
    from plugformer.registry.registry import default_registry

    today = {part.name for part in default_registry().list("model")}
    assert set(PRESETS) <= today


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_state_dict_is_unchanged(name):
    with torch.device("meta"):
        model = plugformer.build(name)
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert shapes == PRESETS[name]["state_dict"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_canonical_spec_still_names_the_same_model(name):
    """The release's canonical text resolves to today's preset; where today's canonical text
    differs, it differs only by arguments added since, at their defaults."""
    then = PRESETS[name]["spec"]
    assert plugformer.resolve(then) == plugformer.resolve(name)


@pytest.mark.parametrize("name", ["gpt_tiny", "transformer_tiny"])
def test_checkpoint_of_the_release_loads_with_equal_outputs(name):
    outputs = load_file(DATA / "outputs-0.1.0.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = plugformer.load(DATA / f"{name}-0.1.0.safetensors").eval()
    ids = outputs[f"{name}.input"]
    with torch.no_grad():
        logits = model(ids) if name == "gpt_tiny" else model(ids, ids[:, :7])
    torch.testing.assert_close(logits, outputs[f"{name}.logits"], rtol=0, atol=1e-5)
