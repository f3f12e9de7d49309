"""Conversions between Hugging Face models and bmojo families, and priming (bmojo.convert).

Every equality is measured against transformers' own models (float32, torch paths), on random small
models whose norms, biases and SSM parameters are perturbed away from their initial values so that a
wrong multiply order, a missing D or conv bias, or a misplaced RoPE half would show in the logits."""

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig, LlamaForCausalLM, Mamba2Config,
                          Mamba2ForCausalLM, MistralConfig, MistralForCausalLM, Trainer, TrainingArguments)

import bmojo
from bmojo import cli
from bmojo.convert import (PrimingDistillation, config_from_hf, config_to_hf, from_hf, new_parameter_names,
                           prime, to_hf)

ATOL = 1e-5
VOCAB = 97


def _perturbed(model, seed=0, proj_scale=4.0, head_scale=25.0):
    """Random values for the parameters a fresh model initialises to constants (norm weights, Mamba-2's D,
    conv bias), so that the test sees them; larger projections so that attention is far from uniform, and a
    larger LM head so that logits of several units make the absolute tolerance a strict one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or name.endswith(".D") or "conv1d.bias" in name):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 2 and "proj" in name:
                p.mul_(proj_scale)
            elif name.endswith(("lm_head.weight", "embed_tokens.weight", "embeddings.weight")):
                p.mul_(head_scale if name.startswith("lm_head") or model.config.tie_word_embeddings else 1.0)
    return model.eval()


def llama(seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, pad_token_id=0,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return _perturbed(LlamaForCausalLM(LlamaConfig(**{**kwargs, **overrides})), seed)


def mistral(seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, sliding_window=5, pad_token_id=0)
    return _perturbed(MistralForCausalLM(MistralConfig(**{**kwargs, **overrides})), seed)


def mamba2(seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8,
                  state_size=16, n_groups=1, expand=2, conv_kernel=4, chunk_size=8, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    # HF's Mamba2 init is already larger (initializer_range 0.1); larger still, both float32 paths move
    # ~4e-5 away from a float64 run of HF's model on logits of ~60, and from each other by as much.
    return _perturbed(Mamba2ForCausalLM(Mamba2Config(**{**kwargs, **overrides})), seed, 1.0, 5.0)


def ids(batch=2, length=21, seed=1):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(x, pads):
    """x with pads[b] leading tokens of row b replaced by padding (id 0), and its attention mask."""
    mask = torch.ones_like(x)
    for b, pad in enumerate(pads):
        mask[b, :pad] = 0
    return x.masked_fill(mask == 0, 0), mask


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_same_logits(hf, ours, x, mask=None):
    with torch.no_grad():
        theirs = hf(x, attention_mask=mask, use_cache=False).logits
        mine = ours(x, attention_mask=mask).logits
    real = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    assert theirs.abs().max() > 1.0  # logits far from trivial, so that ATOL is a real test
    assert max_diff(theirs[real], mine[real]) < ATOL


def assert_same_decoding(hf, ours, x, mask, new_tokens=8):
    """Greedy generation with each model's own cache: the same tokens and the same logits at every step."""
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        theirs, mine = hf.generate(x, **kwargs), ours.generate(x, **kwargs)
    assert torch.equal(theirs.sequences, mine.sequences)
    assert len(mine.logits) == new_tokens
    assert max(max_diff(a, b) for a, b in zip(theirs.logits, mine.logits)) < ATOL


# -- exact conversions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True},
    {"head_dim": 12, "num_key_value_heads": 4},  # heads * head_dim != hidden_size, no GQA
])
def test_llama_to_bmojo_and_back_equal_hf_logits(overrides):
    hf = llama(**overrides)
    ours = from_hf(hf)
    assert ours.config.mixer_types == ["full_attention"] * 2
    assert ours.config.rope_theta == 500.0 and ours.config.rms_norm_eps == 1e-6
    assert ours.config.tie_word_embeddings == hf.config.tie_word_embeddings
    x, mask = left_padded(ids(), pads=(0, 6))
    assert_same_logits(hf, ours, x, mask)
    back = to_hf(ours)
    assert isinstance(back, LlamaForCausalLM)
    for name, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert_same_logits(hf, back, x, mask)


def test_llama_cached_decoding_equals_hf():
    hf = llama(seed=3)
    x, mask = left_padded(ids(length=13, seed=4), pads=(0, 4))
    assert_same_decoding(hf, from_hf(hf), x, mask)


def test_mistral_with_window_shorter_than_prompt_equals_hf():
    hf = mistral(seed=5)
    ours = from_hf(hf)
    assert ours.config.mixer_types == ["sliding_attention"] * 2 and ours.config.window_size == 5
    x = ids(length=21, seed=6)  # four times the window
    assert_same_logits(hf, ours, x)
    assert_same_decoding(hf, ours, x, torch.ones_like(x), new_tokens=10)
    back = to_hf(ours)
    assert isinstance(back, MistralForCausalLM) and back.config.sliding_window == 5
    assert_same_logits(hf, back, x)


def test_mistral_without_window_is_full_attention():
    hf = mistral(sliding_window=None)
    ours = from_hf(hf)
    assert ours.config.mixer_types == ["full_attention"] * 2
    assert_same_logits(hf, ours, ids())


@pytest.mark.parametrize("overrides", [{}, {"use_conv_bias": False, "tie_word_embeddings": True}])
def test_mamba2_to_bmojo_equals_hf_torch_path(overrides):
    hf = mamba2(seed=7, **overrides)
    ours = from_hf(hf)
    assert ours.config.mixer_types == ["mamba2"] * 2 and ours.config.intermediate_size == 0
    assert not any(".mlp." in name for name, _ in ours.named_parameters())  # Mamba blocks have no MLP
    x, mask = left_padded(ids(length=19, seed=8), pads=(0, 5))  # chunks of 8: a partial last chunk
    assert_same_logits(hf, ours, x, mask)
    assert_same_decoding(hf, ours, x, mask)
    back = to_hf(ours)
    assert isinstance(back, Mamba2ForCausalLM)
    assert_same_logits(hf, back, x, mask)


def _llama_config(**kw):
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, **kw)


def _mamba2_config(**kw):
    return Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8,
                        **{"n_groups": 1, **kw})


@pytest.mark.parametrize("config, field", [
    (_llama_config(attention_bias=True), "attention_bias"),
    (_llama_config(mlp_bias=True), "mlp_bias"),
    (_llama_config(hidden_act="gelu"), "hidden_act"),
    (_llama_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     "rope_scaling"),
    (_llama_config(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
    (_llama_config(attention_dropout=0.1), "attention_dropout"),
    (_mamba2_config(n_groups=2), "n_groups"),
    (_mamba2_config(use_bias=True), "use_bias"),
    (_mamba2_config(time_step_limit=(0.0, 10.0)), "time_step_limit"),
    (_mamba2_config(hidden_act="gelu"), "hidden_act"),
    (GPT2Config(), "model_type"),
])
def test_conversion_refuses_what_it_cannot_map(config, field):
    with pytest.raises(ValueError, match=field):
        config_from_hf(config)


@pytest.mark.parametrize("overrides, field", [
    (dict(mixer_types=["full_attention", "sliding_attention"]), "mixer_types"),
    (dict(mixer_types=["bmojo", "bmojo"]), "mixer_types"),
    (dict(mixer_types=["full_attention"] * 2, qk_norm=True), "qk_norm"),
    (dict(mixer_types=["full_attention"] * 2, intermediate_size=0), "intermediate_size"),
    (dict(mixer_types=["mamba2"] * 2), "intermediate_size"),  # an MLP in every block
    (dict(mixer_types=["mamba2"] * 2, intermediate_size=0, ssm_n_groups=2), "ssm_n_groups"),
])
def test_conversion_to_hf_refuses_what_hf_cannot_compute(overrides, field):
    config = bmojo.preset_config("tiny", **overrides)
    with pytest.raises(ValueError, match=field):
        config_to_hf(config)


def test_conversion_refuses_decay_rates_beyond_bmojos_bound():
    hf = mamba2()
    with torch.no_grad():
        hf.backbone.layers[1].mixer.A_log[0] = math.log(1e5)
    with pytest.raises(ValueError, match="A_log"):
        from_hf(hf)


def test_cli_converts_checkpoints_both_ways(tmp_path):
    hf = llama(seed=9)
    hf.save_pretrained(tmp_path / "llama")
    assert cli.main(["convert", str(tmp_path / "llama"), str(tmp_path / "bmojo")]) == 0
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "bmojo")
    assert type(ours).__name__ == "BMojoForCausalLM"  # (pytest may import the root package twice)
    x = ids()
    assert_same_logits(hf, ours, x)
    assert cli.main(["convert", str(tmp_path / "bmojo"), str(tmp_path / "back")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert isinstance(back, LlamaForCausalLM)
    assert_same_logits(hf, back, x)
    assert cli.main(["convert", str(tmp_path / "llama"), str(tmp_path / "primed"), "--prime",
                     "--window-size", "8", "--eidetic-capacity", "0"]) == 0
    primed = AutoModelForCausalLM.from_pretrained(tmp_path / "primed")
    assert primed.config.mixer_types == ["bmojo"] * 2 and primed.config.eidetic_capacity == 0
    # a conversion it cannot do: an error message naming the field, exit status 2
    assert cli.main(["convert", str(tmp_path / "primed"), str(tmp_path / "no")]) == 2


# -- priming -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, window", [(llama, 40), (mistral, None)])
def test_primed_bmojo_without_fading_band_or_store_equals_its_source(make, window):
    """A window over the whole input (or Mistral's own window), n_f = 0 and no store: attention exactly."""
    hf = make(seed=10)
    overrides = dict(fading_tokens=0, eidetic_capacity=0)
    if window is not None:
        overrides["window_size"] = window  # the prompt (21) and the 10 generated tokens fit in it
    primed = prime(hf, **overrides).eval()
    assert primed.config.mixer_types == ["bmojo"] * 2
    x = ids(length=21, seed=11)
    assert_same_logits(hf, primed, x)
    assert_same_decoding(hf, primed, x, torch.ones_like(x), new_tokens=10)


def test_priming_maps_attention_weights_into_the_ssm():
    """value -> x, key -> B, query -> C, output -> out_proj, gate z = (W_O^T + W_V repeated) / 2, with the
    key/value heads repeated for the query heads of their GQA group; everything shared is copied."""
    hf = llama(seed=12, tie_word_embeddings=False)
    primed = prime(hf, mixer_types=["bmojo", "mamba2"], window_size=8, tie_fading_projections=False)
    heads, kv_heads, d = 4, 2, 8
    for i, ssm in ((0, primed.model.layers[0].mixer.fading), (1, primed.model.layers[1].mixer)):
        attn = hf.model.layers[i].self_attn
        assert (ssm.heads, ssm.head_dim, ssm.state_size, ssm.groups) == (heads, d, d, heads)
        z, x, b, c, dt = ssm.in_proj.weight.split([heads * d] * 4 + [heads])
        for h in range(heads):
            kv = h // (heads // kv_heads)  # the KV head attention's query head h reads
            rows, kv_rows = slice(h * d, (h + 1) * d), slice(kv * d, (kv + 1) * d)
            assert torch.equal(x[rows], attn.v_proj.weight[kv_rows])
            assert torch.equal(b[rows], attn.k_proj.weight[kv_rows])
            assert torch.equal(c[rows], attn.q_proj.weight[rows])
            assert torch.allclose(z[rows], 0.5 * (attn.o_proj.weight.t()[rows] + attn.v_proj.weight[kv_rows]))
        assert torch.equal(ssm.out_proj.weight, attn.o_proj.weight)
    mixer = primed.model.layers[0].mixer
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(mixer, name).weight, getattr(hf.model.layers[0].self_attn, name).weight)
    assert torch.equal(mixer.kf_proj.weight, mixer.k_proj.weight)
    assert torch.equal(primed.lm_head.weight, hf.lm_head.weight)
    assert torch.equal(primed.model.layers[1].mlp.down_proj.weight, hf.model.layers[1].mlp.down_proj.weight)
    new = set(new_parameter_names(primed))
    assert "model.layers.0.mixer.predictor.proj.weight" in new and "model.layers.1.mixer.A_log" in new
    assert not any("q_proj" in n or "mlp" in n or "norm.weight" in n and "fading" not in n and
                   ".1.mixer." not in n for n in new)


def test_priming_refuses_ssm_shapes_that_cannot_hold_attention():
    with pytest.raises(ValueError, match="ssm_head_dim"):
        prime(llama(), ssm_head_dim=4)
    fresh = prime(llama(), fading_init="fresh", ssm_head_dim=16, window_size=8)
    assert fresh.model.layers[0].mixer.fading.head_dim == 16


def test_priming_distillation_trains_only_new_weights_and_lowers_its_loss(tmp_path):
    teacher = llama(seed=13, tie_word_embeddings=True)
    teacher_before = {n: p.clone() for n, p in teacher.named_parameters()}
    shape = dict(mixer_types=["bmojo", "mamba2"], window_size=4, fading_tokens=4, eidetic_capacity=8,
                 eidetic_tokens_per_chunk=2, ssm_chunk_size=8)
    student = prime(teacher, **shape)
    distiller = PrimingDistillation(student, teacher)
    student_before = {n: p.clone() for n, p in student.named_parameters()}
    data = [{"input_ids": row} for row in ids(batch=64, length=24, seed=14)]
    probe = torch.stack([row["input_ids"] for row in data[:16]])
    with torch.no_grad():
        loss_before = distiller(probe).loss.item()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=20, learning_rate=1e-2,
                             per_device_train_batch_size=8, report_to=[], save_steps=20, use_cpu=True,
                             disable_tqdm=True, logging_steps=100)
    Trainer(model=distiller, args=args, train_dataset=data).train()
    # The checkpoint holds the student, tied embeddings once, and a fresh distiller reloads it exactly.
    saved = load_file(tmp_path / "checkpoint-20" / "model.safetensors")
    fresh = PrimingDistillation(prime(teacher, **shape), teacher)
    assert not fresh.load_state_dict(saved, strict=True).missing_keys
    assert all(torch.equal(p, student.state_dict()[n]) for n, p in fresh.student.state_dict().items())
    with torch.no_grad():
        out = distiller.eval()(probe)
    assert out.loss.item() < 0.6 * loss_before  # measured: 1.94 -> 0.92
    assert out.innovation_loss.item() > 0  # the predictor is trained through it
    new = set(new_parameter_names(student))
    for name, p in student.named_parameters():
        assert torch.equal(p, student_before[name]) != (name in new), name  # new weights moved, others not
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())


@torch.no_grad()
def test_blocks_without_mlp_have_none_and_keep_both_forms_equal():
    """intermediate_size=0: every block is x + Mixer(RMSNorm(x)), for each mixer type; forward = prefill
    + token-by-token decode (atol 1e-4, as tests/test_cache_equivalence.py)."""
    from conftest import random_ids, tiny_model
    from test_cache_equivalence import prefill_then_decode

    kinds = ["bmojo", "mamba2", "sliding_attention", "full_attention"]
    model = tiny_model(num_hidden_layers=4, mixer_types=kinds, intermediate_size=0)
    assert all(layer.mlp is None and layer.post_mixer_norm is None for layer in model.model.layers)
    assert not any("mlp" in name or "post_mixer_norm" in name for name in model.state_dict())
    x = random_ids(2, 30, seed=15)
    full = model(x, use_cache=False).logits
    for split in (1, 9, 29):
        got, _ = prefill_then_decode(model, x, split)
        torch.testing.assert_close(got, full, atol=1e-4, rtol=0)
