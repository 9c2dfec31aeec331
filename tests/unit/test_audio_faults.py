"""The audio-tower device fault on a module tree shaped like vLLM's Qwen2-Audio: the encoder's attention mask is
dropped whether it comes by keyword or by position, and a model without an audio tower refuses it."""
from types import SimpleNamespace

import pytest
import torch

from pytest_npuprec.runners.faults.audio import FAULTS, audio_mask
from pytest_npuprec.runners.fault_names import FAULT_NAMES


class Tower(torch.nn.Module):
    def forward(self, features, attention_mask=None):
        return features if attention_mask is None else features + attention_mask


def test_audio_mask_drops_the_encoders_attention_mask():
    model = SimpleNamespace(audio_tower=Tower())
    assert "mask dropped" in audio_mask(model, 0)
    x, mask = torch.ones(2), torch.full((2,), -1e9)
    assert torch.equal(model.audio_tower(x, attention_mask=mask), x)
    assert torch.equal(model.audio_tower(x, mask), x)
    assert torch.equal(Tower()(x, attention_mask=mask), x + mask)  # the unhooked tower uses it


def test_audio_mask_refuses_a_model_without_an_audio_tower():
    with pytest.raises(RuntimeError, match="no audio tower"):
        audio_mask(SimpleNamespace(visual=Tower()), 0)


def test_audio_faults_are_named_for_the_option():
    assert set(FAULTS) <= set(FAULT_NAMES)
