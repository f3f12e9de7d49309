"""save_pretrained writes safetensors only; from_pretrained (direct or through the Auto classes) gives
bitwise-equal logits."""

import os

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import bmojo
from conftest import random_ids, tiny_model


def test_round_trip_is_bitwise(tmp_path):
    model = tiny_model(qk_norm=True, tie_fading_projections=False)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    ids = random_ids(2, 30)
    for loaded in (bmojo.BMojoForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert type(loaded) is bmojo.BMojoForCausalLM
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)


def test_auto_classes_resolve(tmp_path):
    cfg = bmojo.preset_config("tiny")
    cfg.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is bmojo.BMojoConfig
    assert type(AutoModel.from_config(cfg)) is bmojo.BMojoModel
    assert type(AutoModelForCausalLM.from_config(cfg)) is bmojo.BMojoForCausalLM


def test_tied_embeddings_and_dtype(tmp_path):
    model = tiny_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert loaded.dtype == torch.bfloat16
    with torch.no_grad():
        logits = loaded(random_ids(1, 20)).logits
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())


def test_device_map_through_accelerate(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    assert loaded.device.type == "cpu"
