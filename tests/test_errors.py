"""Bad input raises a ValueError that names the problem, before it reaches a kernel."""

import copy
import inspect
import json
import re
import shutil

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import bmojo
from bmojo.modeling_bmojo.checkpoint import CheckpointMismatchError
from conftest import cache_of, random_ids, tiny_model

NAN, INF = float("nan"), float("inf")

# One bad value (at least) for every argument of BMojoConfig.__init__, on top of the "tiny" preset
# (vocab_size=128, hidden_size=32, 2 heads, window 8, 4 SSM heads). The message must name the field.
BAD_CONFIG_VALUES = [
    ("vocab_size", 1.5, "vocab_size"),
    ("hidden_size", 0, "hidden_size"),
    ("intermediate_size", -1, "intermediate_size"),
    ("num_hidden_layers", 0, "num_hidden_layers"),
    ("mixer_types", ["bmojo", "transformer"], "mixer_types[1]"),
    ("mixer_types", ["bmojo"], "mixer_types"),
    ("mixer_types", "bmojo", "mixer_types"),
    ("num_attention_heads", 0, "num_attention_heads"),
    ("num_key_value_heads", 3, "num_key_value_heads"),
    ("head_dim", 15, "head_dim"),
    ("qk_norm", "yes", "qk_norm"),
    ("fused_linear_cross_entropy", "yes", "fused_linear_cross_entropy"),
    ("qk_norm", 1, "qk_norm"),
    ("window_size", 0, "window_size"),
    ("fading_tokens", -1, "fading_tokens"),
    ("tie_fading_projections", None, "tie_fading_projections"),
    ("eidetic_tokens_per_chunk", 9, "eidetic_tokens_per_chunk"),  # more than the window holds
    ("eidetic_capacity", -2, "eidetic_capacity"),
    ("innovation_loss_weight", NAN, "innovation_loss_weight"),
    ("rope_theta", INF, "rope_theta"),
    ("rope_theta", NAN, "rope_theta"),
    ("ssm_state_size", 0, "ssm_state_size"),
    ("ssm_head_dim", 7, "ssm_head_dim"),
    ("ssm_expand", 0, "ssm_expand"),
    ("ssm_n_groups", 3, "ssm_n_groups"),  # does not divide the 4 SSM heads
    ("conv_kernel", 0, "conv_kernel"),
    ("ssm_chunk_size", 0, "ssm_chunk_size"),
    ("dt_min", 0.5, "dt_min and dt_max"),  # above dt_max=0.1: both are named
    ("dt_min", 0.0, "dt_min"),
    ("dt_max", 1e-5, "dt_min and dt_max"),
    ("dt_max", INF, "dt_max"),
    ("dt_init_floor", 0.5, "dt_init_floor"),  # above dt_max: it would replace every initial step size
    ("dt_init_floor", 0.0, "dt_init_floor"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
    ("rms_norm_eps", INF, "rms_norm_eps"),
    ("initializer_range", INF, "initializer_range"),
    ("initializer_range", NAN, "initializer_range"),
    ("tie_word_embeddings", "true", "tie_word_embeddings"),
    ("pad_token_id", 128, "pad_token_id"),
    ("bos_token_id", -1, "bos_token_id"),
    ("eos_token_id", [2, 200], "eos_token_id"),
    ("eos_token_id", 2.0, "eos_token_id"),
    ("use_kernels", "yes", "use_kernels"),
    ("use_kernels", 1, "use_kernels"),
    ("use_cache", "no", "use_cache"),
    ("ssm_a_init", "log-uniform", "ssm_a_init"),
    ("ssm_proj_init", "xavier", "ssm_proj_init"),
]


@pytest.mark.parametrize("field,value,words", BAD_CONFIG_VALUES)
def test_invalid_config_values(field, value, words):
    with pytest.raises(ValueError, match="BMojoConfig." + re.escape(words)):
        bmojo.preset_config("tiny", **{field: value})


def test_every_config_argument_has_a_bad_value_test():
    arguments = set(inspect.signature(bmojo.BMojoConfig.__init__).parameters) - {"self", "kwargs"}
    assert arguments == {field for field, _, _ in BAD_CONFIG_VALUES}


def test_config_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"pad_token_id must be None or an integer in \[0, 127\]"):
        bmojo.preset_config("tiny", pad_token_id=128)
    with pytest.raises(ValueError, match=r"dt_min=0\.5 > dt_max=0\.1"):
        bmojo.preset_config("tiny", dt_min=0.5)
    with pytest.raises(ValueError, match="rope_theta must be a finite number > 1"):
        bmojo.preset_config("tiny", rope_theta=INF)


@pytest.mark.parametrize("overrides", [
    dict(eos_token_id=[1, 2]), dict(eos_token_id=None, pad_token_id=None, bos_token_id=None),
    dict(pad_token_id=127), dict(rope_theta=500000), dict(dt_min=0.01, dt_max=0.01, dt_init_floor=0.01),
    dict(eidetic_capacity=None), dict(qk_norm=True, tie_fading_projections=False, use_kernels=False),
])
def test_valid_config_values_are_kept(overrides):
    cfg = bmojo.preset_config("tiny", **overrides)
    assert all(getattr(cfg, k) == v for k, v in overrides.items())


def test_every_preset_is_valid():
    for name in bmojo.preset_names():
        bmojo.preset_config(name)


def test_saved_config_with_extra_hf_fields_loads(tmp_path):
    bmojo.preset_config("tiny").save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(torch_dtype="bfloat16", architectures=["BMojoForCausalLM"], eos_token_id=[2, 1], foo=3)
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = bmojo.BMojoConfig.from_pretrained(tmp_path)
    assert cfg.eos_token_id == [2, 1] and cfg.foo == 3


def test_config_overrides_and_assignments_are_validated(tmp_path):
    bmojo.preset_config("tiny").save_pretrained(tmp_path)
    # from_pretrained(path, **overrides) sets the overrides after __init__; they are checked all the same.
    with pytest.raises(ValueError, match="BMojoConfig.window_size"):
        bmojo.BMojoConfig.from_pretrained(tmp_path, window_size=-1)
    cfg = bmojo.preset_config("tiny")
    cfg.num_hidden_layers = 3  # mixer_types still lists 2 layers
    with pytest.raises(ValueError, match=r"mixer_types must have one entry per layer \(num_hidden_layers=3\)"):
        bmojo.BMojoForCausalLM(cfg)


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
    cache = cache_of(model(random_ids(1, 10), use_cache=True))
    with pytest.raises(ValueError, match="position_ids"):
        model(random_ids(1, 1), cache=cache, position_ids=torch.tensor([[3]]))
    # The consistent value is accepted.
    model(random_ids(1, 1), cache=cache, position_ids=torch.tensor([[10]]))


def test_cache_from_another_config():
    other = tiny_model(window_size=4, fading_tokens=4)
    cache = cache_of(other(random_ids(1, 10), use_cache=True))
    with pytest.raises(ValueError, match="different config"):
        tiny_model()(random_ids(1, 1), cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        other(random_ids(2, 1), cache=cache)


@pytest.mark.parametrize("overrides,words", [
    (dict(qk_norm=True), "qk_norm=True (model: False)"),
    (dict(num_attention_heads=4), "num_attention_heads=4 (model: 2)"),
    (dict(rope_theta=500.0), "rope_theta=500.0 (model: 10000.0)"),
    (dict(tie_fading_projections=False), "tie_fading_projections=False (model: True)"),
    (dict(mixer_types=["bmojo", "mamba2"]), "mixer_types"),
    (dict(eidetic_capacity=8), "eidetic_capacity=8 (model: 16)"),
])
def test_cache_fingerprint_covers_every_field_that_gives_the_tensors_meaning(overrides, words):
    cache = cache_of(tiny_model(**overrides)(random_ids(1, 10), use_cache=True))
    with pytest.raises(ValueError, match="different config: .*" + re.escape(words)):
        tiny_model()(random_ids(1, 1), cache=cache)


def test_cache_of_another_model_with_the_same_config_is_accepted():
    # By design: the cache is not tied to one model object (generate() and beam search copy and reorder it).
    cache = cache_of(tiny_model(seed=1)(random_ids(1, 10), use_cache=True))
    tiny_model(seed=2)(random_ids(1, 1), cache=cache)


@pytest.mark.parametrize("filled_in,read_in", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_cache_in_another_dtype(filled_in, read_in):
    model = tiny_model().to(filled_in)
    cache = cache_of(model(random_ids(1, 10), use_cache=True))
    other = copy.deepcopy(model).to(read_in)
    with pytest.raises(ValueError, match=f"in {filled_in}, expected {read_in} for a model computing in {read_in}"):
        other(random_ids(1, 1), cache=cache)


@pytest.mark.parametrize("mixers", [["bmojo", "mamba2"], ["sliding_attention", "full_attention"]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_filled_by_the_model_passes_the_dtype_check(mixers, dtype):
    # The states keep the SSM state and eidetic scores in float32 whatever the model's dtype: still accepted.
    model = tiny_model(mixer_types=mixers).to(dtype)
    cache = cache_of(model(random_ids(1, 10), use_cache=True))
    model(random_ids(1, 1), cache=cache)  # prefilled
    model(random_ids(1, 1), cache=cache)  # and stepped


def test_cache_under_autocast_is_accepted():
    # Under autocast an fp32 model stores bf16 keys: the dtype check stands aside.
    model = tiny_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(random_ids(2, 5), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 8)


def test_cache_checked_again_after_the_model_changes_dtype():
    model = tiny_model()
    cache = cache_of(model(random_ids(1, 10), use_cache=True))
    model(random_ids(1, 1), cache=cache)  # accepted, and remembered as accepted for this dtype
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="in torch.float32, expected torch.bfloat16"):
        model(random_ids(1, 1), cache=cache)


def test_cache_on_another_device():
    model = tiny_model()
    cache = cache_of(model(random_ids(1, 10), use_cache=True))
    for state in cache.states:  # as if the states had been moved away from the model
        state.map_(lambda t: t.to("meta"))
    with pytest.raises(ValueError, match="layer 0's '.*' on meta but that layer's weights are on cpu"):
        model(random_ids(1, 1), cache=cache)


def test_cache_cannot_be_cropped():
    cache = cache_of(tiny_model()(random_ids(1, 10), use_cache=True))
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(5)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A saved tiny causal LM (tied embeddings) and its logits on a fixed input."""
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model()
    model.save_pretrained(folder)
    with torch.no_grad():
        return folder, model(random_ids(1, 12)).logits


MISMATCH = "does not match the config"


@pytest.mark.parametrize("auto", [AutoModelForCausalLM, AutoModel])
@pytest.mark.parametrize("case,overrides,words", [
    ("more layers", dict(num_hidden_layers=3, mixer_types=["bmojo"] * 3),
     [r"19 parameter\(s\) of the model missing from the checkpoint", r"layers\.2\.input_norm\.weight"]),
    ("fewer layers", dict(num_hidden_layers=1, mixer_types=["bmojo"]),
     [r"19 parameter\(s\) in the checkpoint that the model does not have", r"layers\.1\.input_norm\.weight"]),
    ("layer 1 bmojo -> mamba2", dict(mixer_types=["bmojo", "mamba2"]),
     [r"8 parameter\(s\) of the model missing", r"layers\.1\.mixer\.A_log",
      r"14 parameter\(s\) in the checkpoint that the model does not have", r"layers\.1\.mixer\.fading\.A_log"]),
    ("wider", dict(hidden_size=48),
     [r"38 parameter\(s\) with a different shape",
      r"embed_tokens\.weight \(checkpoint \(128, 32\), model \(128, 48\)\)"]),
])
def test_checkpoint_from_a_different_config(saved_tiny, auto, case, overrides, words):
    folder, _ = saved_tiny
    with pytest.raises(ValueError, match=MISMATCH) as err:
        auto.from_pretrained(folder, **overrides)
    for pattern in words:
        assert re.search(pattern, str(err.value)), (case, pattern, str(err.value))
    assert isinstance(err.value, CheckpointMismatchError) and "missing_keys" in err.value.loading_info
    # The same through a config object instead of keyword overrides.
    with pytest.raises(ValueError, match=MISMATCH):
        auto.from_pretrained(folder, config=bmojo.preset_config("tiny", **overrides))


def test_checkpoint_with_a_hand_edited_config_json(saved_tiny, tmp_path):
    folder, _ = saved_tiny
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    data = json.loads((tmp_path / "config.json").read_text())
    data["mixer_types"] = ["bmojo", "sliding_attention"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=MISMATCH + r".*in the checkpoint that the model does not have: "
                                                    r"model\.layers\.1\.mixer\.fading"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_more_layers_by_keyword_alone_is_a_config_error(saved_tiny):
    # The saved mixer_types lists 2 layers; the override asks for 3.
    with pytest.raises(ValueError, match=r"mixer_types must have one entry per layer \(num_hidden_layers=3\)"):
        AutoModelForCausalLM.from_pretrained(saved_tiny[0], num_hidden_layers=3)


def test_matching_checkpoint_loads_with_tied_head_and_loading_info(saved_tiny):
    folder, logits = saved_tiny
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(random_ids(1, 12)).logits, logits)
    assert isinstance(AutoModel.from_pretrained(folder), bmojo.BMojoModel)


def test_ignore_mismatched_sizes_keeps_its_meaning(saved_tiny):
    model = AutoModelForCausalLM.from_pretrained(saved_tiny[0], hidden_size=48, ignore_mismatched_sizes=True)
    assert model.config.hidden_size == 48


def test_untied_head_between_base_and_causal_lm(tmp_path):
    lm = tiny_model(tie_word_embeddings=False)
    lm.save_pretrained(tmp_path / "lm")
    base = bmojo.BMojoModel.from_pretrained(tmp_path / "lm")  # the base model drops the LM head: allowed
    base.save_pretrained(tmp_path / "base")
    # As for Llama: an untied LM from a base checkpoint loads every base weight, initialises the output head
    # (config.initializer_range, 0.2 here) and reports it as missing.
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "base", tie_word_embeddings=False,
                                                       output_loading_info=True)
    assert set(info["missing_keys"]) == {"lm_head.weight"} and not info["unexpected_keys"]
    saved = lm.model.state_dict()
    assert all(torch.equal(t, saved[name]) for name, t in model.model.state_dict().items())
    head = model.lm_head.weight
    assert head.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert bool(torch.isfinite(head).all()) and abs(float(head.std()) - 0.2) < 0.02
    assert not torch.equal(head, lm.lm_head.weight)
    # Without output_loading_info it loads all the same.
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "base", tie_word_embeddings=False),
                      bmojo.BMojoForCausalLM)
    # A base checkpoint that lacks more than the head is still refused, the head listed with the rest.
    with pytest.raises(ValueError, match=MISMATCH + r".*20 parameter\(s\) of the model missing.*"
                                                    r"lm_head\.weight, model\.layers\.2\."):
        AutoModelForCausalLM.from_pretrained(tmp_path / "base", tie_word_embeddings=False,
                                             num_hidden_layers=3, mixer_types=["bmojo"] * 3)


def test_output_loading_info_returns_what_does_not_match(saved_tiny):
    # The caller asks for the info: missing and unexpected parameters come back in it, as from transformers.
    folder, _ = saved_tiny
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                       num_hidden_layers=3, mixer_types=["bmojo"] * 3)
    assert len(model.model.layers) == 3
    assert len(info["missing_keys"]) == 19 and all(".layers.2." in k for k in info["missing_keys"])
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True, mixer_types=["bmojo", "mamba2"])
    assert "layers.1.mixer.A_log" in info["missing_keys"]
    # (unexpected keys keep the checkpoint's "model." prefix)
    assert any(k.endswith("layers.1.mixer.fading.A_log") for k in info["unexpected_keys"])
    # Shapes that disagree still raise (transformers raises too), unless the caller ignores them.
    with pytest.raises(ValueError, match=MISMATCH + r".*38 parameter\(s\) with a different shape"):
        AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, hidden_size=48)
    _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, hidden_size=48,
                                                   ignore_mismatched_sizes=True)
    assert len(info["mismatched_keys"]) == 38


@pytest.mark.parametrize("cls", [bmojo.BMojoModel, bmojo.BMojoForCausalLM])
def test_weights_from_the_callers_state_dict(cls):
    cfg = bmojo.preset_config("tiny", tie_word_embeddings=False)
    torch.manual_seed(0)
    weights = cls(cfg).state_dict()
    loaded = cls.from_pretrained(None, config=cfg, state_dict=weights).state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    # state_dict={}: transformers' way to build on the meta device and initialise every parameter.
    fresh = cls.from_pretrained(None, config=cfg, state_dict={})
    assert all(p.device.type == "cpu" and bool(torch.isfinite(p).all()) for p in fresh.parameters())
    # A dict of another config (a third layer the model does not have) is still refused.
    deeper = cls(bmojo.preset_config("tiny", num_hidden_layers=3, mixer_types=["bmojo"] * 3)).state_dict()
    with pytest.raises(ValueError, match=MISMATCH + r".*in the checkpoint that the model does not have"):
        cls.from_pretrained(None, config=cfg, state_dict=deeper)


def test_config_json_with_out_of_range_value(tmp_path):
    bmojo.preset_config("tiny").save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"window_size": 8', '"window_size": -8')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="window_size"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_preset_depth_override_keeps_the_family_pattern():
    assert bmojo.preset_config("bmojo-130m", num_hidden_layers=2).mixer_types == ["bmojo", "bmojo"]
    assert bmojo.preset_config("hybrid-tiny", num_hidden_layers=8).mixer_types.count("full_attention") == 2
