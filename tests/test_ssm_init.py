"""BMojoConfig.ssm_a_init: the Mamba-2 decay initialisation ("uniform" A ~ U(1, 16), "arange" A_h = h + 1)."""

import pytest
import torch

import bmojo
from bmojo.modeling_bmojo.mamba2 import Mamba2Mixer


def _mixers(model):
    return [m for m in model.modules() if isinstance(m, Mamba2Mixer)]


@pytest.mark.parametrize("family", ["mamba2-tiny", "tiny"])  # a Mamba-2 layer and B'MOJO's fading SSM
def test_arange_init_sets_a_log_to_log_one_to_heads(family):
    config = bmojo.preset_config(family, ssm_a_init="arange")
    torch.manual_seed(0)
    mixers = _mixers(bmojo.BMojoForCausalLM(config))
    heads = config.ssm_num_heads
    assert heads > 1 and len(mixers) == config.num_hidden_layers
    expected = torch.log(torch.arange(1, heads + 1, dtype=torch.float32))
    for mixer in mixers:
        torch.testing.assert_close(mixer.A_log.detach(), expected, rtol=0, atol=0)


def test_uniform_init_is_the_default_and_draws_a_in_1_to_16():
    config = bmojo.preset_config("mamba2-tiny", ssm_state_size=8, hidden_size=128, ssm_head_dim=8)
    assert config.ssm_a_init == "uniform"
    torch.manual_seed(0)
    a = torch.cat([m.A_log.detach().exp() for m in _mixers(bmojo.BMojoForCausalLM(config))])
    assert a.numel() == 64 and a.min() >= 1 and a.max() <= 16
    assert not torch.allclose(a[:32], torch.arange(1, 33, dtype=torch.float32))  # random, not the ramp


def test_ssm_a_init_survives_save_and_load(tmp_path):
    config = bmojo.preset_config("mamba2-tiny", ssm_a_init="arange")
    config.save_pretrained(tmp_path)
    assert bmojo.BMojoConfig.from_pretrained(tmp_path).ssm_a_init == "arange"


@pytest.mark.parametrize("bad", ["hf", "ARANGE", None, 1])
def test_bad_ssm_a_init_raises_naming_the_field_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"ssm_a_init must be one of \('uniform', 'arange'\)"):
        bmojo.preset_config("mamba2-tiny", ssm_a_init=bad)
    config = bmojo.preset_config("mamba2-tiny")
    config.ssm_a_init = bad  # assigned after construction: the model's constructor validates again
    with pytest.raises(ValueError, match="ssm_a_init"):
        bmojo.BMojoForCausalLM(config)
