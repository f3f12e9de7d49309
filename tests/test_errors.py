"""Bad input raises a ValueError that names the problem, before it reaches a kernel."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import bmojo
from conftest import random_ids, tiny_model


@pytest.mark.parametrize("field,value,words", [
    ("window_size", 0, "window_size"),
    ("fading_tokens", -1, "fading_tokens"),
    ("eidetic_capacity", -2, "eidetic_capacity"),
    ("eidetic_tokens_per_chunk", 9, "eidetic_tokens_per_chunk"),  # more than the window holds
    ("num_key_value_heads", 3, "num_key_value_heads"),
    ("head_dim", 15, "head_dim"),
    ("mixer_types", ["bmojo", "transformer"], "mixer_types[1]"),
    ("mixer_types", ["bmojo"], "mixer_types"),
    ("ssm_head_dim", 7, "ssm_head_dim"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
    ("dt_max", 1e-5, "dt_max"),
    ("use_kernels", "yes", "use_kernels"),
    ("vocab_size", 1.5, "vocab_size"),
])
def test_invalid_config_values(field, value, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        bmojo.preset_config("tiny", **{field: value})


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset name"):
        bmojo.preset_config("bmojo-7b")


def test_config_json_with_unknown_mixer(tmp_path):
    cfg = bmojo.preset_config("tiny")
    cfg.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"sliding', '"sliding').replace('"bmojo",', '"lstm",', 1)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="mixer_types"):
        bmojo.BMojoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("ids,words", [
    (torch.tensor([[5, 128]]), "input_ids must lie in"),
    (torch.tensor([[5, -1]]), "input_ids must lie in"),
    (torch.tensor([[1.0, 2.0]]), "integer tensor"),
    (torch.tensor([5, 6]), "shape"),
])
def test_bad_input_ids(ids, words):
    with pytest.raises(ValueError, match=words):
        tiny_model()(ids)


def test_bad_attention_mask():
    model = tiny_model()
    ids = random_ids(2, 6)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(ids, attention_mask=torch.full((2, 6), 2))
    holes = torch.tensor([[1, 1, 0, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="0 between real tokens"):
        model(ids, attention_mask=holes)


def test_bad_inputs_embeds_and_both_given():
    model = tiny_model()
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(inputs_embeds=torch.randn(1, 4, 7))
    with pytest.raises(ValueError, match="exactly one"):
        model(random_ids(1, 3), inputs_embeds=torch.randn(1, 3, 32))


def test_position_ids_inconsistent_with_cache():
    model = tiny_model()
    cache = model(random_ids(1, 10), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="position_ids"):
        model(random_ids(1, 1), past_key_values=cache, position_ids=torch.tensor([[3]]))
    # The consistent value is accepted.
    model(random_ids(1, 1), past_key_values=cache, position_ids=torch.tensor([[10]]))


def test_cache_from_another_config():
    other = tiny_model(window_size=4, fading_tokens=4)
    cache = other(random_ids(1, 10), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="different config"):
        tiny_model()(random_ids(1, 1), past_key_values=cache)
    with pytest.raises(ValueError, match="batch size"):
        other(random_ids(2, 1), past_key_values=cache)


def test_cache_cannot_be_cropped():
    cache = tiny_model()(random_ids(1, 10), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(5)


def test_checkpoint_from_a_different_config(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    wider = bmojo.preset_config("tiny", hidden_size=48)
    with pytest.raises(Exception, match="(?i)size|shape"):
        AutoModelForCausalLM.from_pretrained(tmp_path, config=wider)


def test_config_json_with_out_of_range_value(tmp_path):
    bmojo.preset_config("tiny").save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"window_size": 8', '"window_size": -8')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="window_size"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_preset_depth_override_keeps_the_family_pattern():
    assert bmojo.preset_config("bmojo-130m", num_hidden_layers=2).mixer_types == ["bmojo", "bmojo"]
    assert bmojo.preset_config("hybrid-tiny", num_hidden_layers=8).mixer_types.count("full_attention") == 2
