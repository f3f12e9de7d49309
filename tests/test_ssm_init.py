"""BMojoConfig.ssm_a_init: the Mamba-2 decay initialisation ("uniform" A ~ U(1, 16), "arange" A_h = h + 1),
and BMojoConfig.ssm_proj_init: the scale of its in_proj / out_proj ("normal" N(0, initializer_range),
"fan_in" mamba_ssm's U(+-1/sqrt(fan_in)) with out_proj / sqrt(layers))."""

import math

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


def test_presets_defaults_arange_for_mamba2_layers_uniform_for_bmojo():
    """The mamba2 and hybrid families start from HF's A_h = h + 1 (it learned better, issue 12); B'MOJO's
    fading SSM and a bare BMojoConfig keep mamba_ssm's U(1, 16)."""
    assert bmojo.preset_config("mamba2-tiny").ssm_a_init == "arange"
    assert bmojo.preset_config("hybrid-130m").ssm_a_init == "arange"
    assert bmojo.preset_config("tiny").ssm_a_init == "uniform"
    assert bmojo.preset_config("bmojo-f-tiny").ssm_a_init == "uniform"
    assert bmojo.BMojoConfig().ssm_a_init == "uniform"


def test_uniform_init_draws_a_in_1_to_16():
    config = bmojo.preset_config("mamba2-tiny", ssm_state_size=8, hidden_size=128, ssm_head_dim=8,
                                 ssm_a_init="uniform")
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


@pytest.mark.parametrize("family", ["mamba2-tiny", "tiny"])
def test_fan_in_projection_init_bounds_and_scales(family):
    config = bmojo.preset_config(family, hidden_size=64, num_hidden_layers=4, ssm_proj_init="fan_in")
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(config)
    mixers = _mixers(model)
    assert len(mixers) == 4
    for mixer in mixers:
        for proj, scale in ((mixer.in_proj, 1.0), (mixer.out_proj, 0.5)):  # out_proj: 1 / sqrt(4 layers)
            bound = scale / math.sqrt(proj.in_features)
            w = proj.weight.detach()
            assert w.abs().max() <= bound
            # a uniform on [-b, b] has std b / sqrt(3); thousands of draws put it within 5 %
            assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.05, (proj, w.std())
    # every other linear layer keeps N(0, initializer_range)
    head_std = model.model.embed_tokens.weight.detach().std().item()
    assert abs(head_std / config.initializer_range - 1) < 0.05


def test_out_fan_in_init_is_hf_mamba2s_distribution():
    """"out_fan_in": in_proj keeps N(0, initializer_range), out_proj U(+-1/sqrt(fan_in)) with no depth
    scaling, the distribution HF Mamba2 starts from (its out_proj keeps PyTorch's Linear default)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = bmojo.preset_config("mamba2-tiny", hidden_size=64, num_hidden_layers=4, initializer_range=0.1,
                                 ssm_proj_init="out_fan_in")
    torch.manual_seed(0)
    mixers = _mixers(bmojo.BMojoForCausalLM(config))
    torch.manual_seed(0)
    hf = Mamba2ForCausalLM(Mamba2Config(hidden_size=64, num_hidden_layers=4, num_heads=4, head_dim=32,
                                        state_size=16, n_groups=1, vocab_size=256, initializer_range=0.1))
    for ours, theirs in zip(mixers, (layer.mixer for layer in hf.backbone.layers)):
        bound = 1.0 / math.sqrt(ours.out_proj.in_features)
        for w in (ours.out_proj.weight.detach(), theirs.out_proj.weight.detach()):
            assert w.abs().max() <= bound
            assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
        for w in (ours.in_proj.weight.detach(), theirs.in_proj.weight.detach()):
            assert abs(w.std().item() / 0.1 - 1) < 0.05


def test_normal_projection_init_is_the_default():
    config = bmojo.preset_config("mamba2-tiny", hidden_size=64)
    assert config.ssm_proj_init == "normal"
    torch.manual_seed(0)
    in_proj = _mixers(bmojo.BMojoForCausalLM(config))[0].in_proj.weight.detach()
    assert abs(in_proj.std().item() / config.initializer_range - 1) < 0.05


def test_fan_in_init_does_not_overwrite_loaded_weights(tmp_path):
    config = bmojo.preset_config("mamba2-tiny", ssm_proj_init="fan_in")
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(config)
    with torch.no_grad():
        for mixer in _mixers(model):
            mixer.in_proj.weight.mul_(3.0)  # no longer what the initialiser draws
    model.save_pretrained(tmp_path)
    loaded = bmojo.BMojoForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.ssm_proj_init == "fan_in"
    for a, b in zip(_mixers(model), _mixers(loaded)):
        torch.testing.assert_close(a.in_proj.weight, b.in_proj.weight, rtol=0, atol=0)
