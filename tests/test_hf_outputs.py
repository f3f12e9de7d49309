"""The output switches of transformers' contract: `output_hidden_states` and `return_dict` read from the
config when the call leaves them out (the call wins), and attention weights refused, as B'MOJO has none."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import bmojo
from bmojo.modeling_bmojo.cache import CACHE_NAME
from conftest import random_ids, tiny_model

MIXERS = ["bmojo", "mamba2"]  # one layer of each cached kind of state


def _model(cls, **overrides):
    lm = tiny_model(mixer_types=MIXERS, **overrides)
    return lm if cls is bmojo.BMojoForCausalLM else lm.model


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("cls", [bmojo.BMojoModel, bmojo.BMojoForCausalLM])
def test_output_hidden_states_from_the_config(cls):
    model = _model(cls)
    ids = random_ids(2, 11)
    with torch.no_grad():
        by_keyword = model(ids, output_hidden_states=True).hidden_states
        model.config.output_hidden_states = True
        by_config = model(ids).hidden_states
        assert model(ids, output_hidden_states=False).hidden_states is None  # the call wins
        # The decode step (a filled cache) reads the config as well.
        prefill = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], **{CACHE_NAME: getattr(prefill, CACHE_NAME)})
    assert isinstance(by_config, tuple) and len(by_config) == len(MIXERS) + 1
    _assert_same(by_config, by_keyword)
    assert len(step.hidden_states) == len(MIXERS) + 1
    for whole, last in zip(by_config, step.hidden_states):
        torch.testing.assert_close(last, whole[:, -1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [bmojo.BMojoModel, bmojo.BMojoForCausalLM])
def test_return_dict_false_by_keyword_or_config(cls):
    model = _model(cls)
    ids = random_ids(2, 9)
    extra = {"labels": ids} if cls is bmojo.BMojoForCausalLM else {}
    with torch.no_grad():
        expected = model(ids, output_hidden_states=True, **extra).to_tuple()
        by_keyword = model(ids, output_hidden_states=True, return_dict=False, **extra)
        model.config.return_dict = False
        by_config = model(ids, output_hidden_states=True, **extra)
        assert not isinstance(model(ids, return_dict=True), tuple)  # the call wins
    for got in (by_keyword, by_config):
        assert type(got) is tuple and len(got) == len(expected)
        for a, b in zip(got, expected):
            if torch.is_tensor(a):
                assert torch.equal(a, b)
            elif isinstance(a, tuple):
                _assert_same(a, b)
    if extra:  # the loss comes first, then the logits
        assert by_config[0].dim() == 0 and by_config[1].shape == (2, 9, model.config.vocab_size)


def test_generate_with_tuple_outputs_in_the_config():
    model = tiny_model()
    ids = random_ids(1, 6)
    expected = model.generate(ids, max_new_tokens=4, do_sample=False)
    model.config.return_dict = False
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize("cls", [bmojo.BMojoModel, bmojo.BMojoForCausalLM])
def test_attention_weights_are_refused(cls):
    model = _model(cls)
    ids = random_ids(1, 5)
    with pytest.raises(ValueError, match=r"output_attentions=True is not supported.*never form attention"):
        model(ids, output_attentions=True)
    model.config.output_attentions = True
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        model(ids)
    model.config.output_attentions = False
    assert model(ids, output_attentions=False)[0].shape[:2] == (1, 5)  # last_hidden_state or logits


def test_hidden_state_selection_by_index_is_refused():
    with pytest.raises(ValueError, match=r"output_hidden_states must be True or False"):
        tiny_model()(random_ids(1, 4), output_hidden_states=[0, -1])


@pytest.mark.parametrize("backend", ["sdpa", "flash_attention_2", "flex_attention"])
def test_no_attention_backend_to_choose(tmp_path, backend):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not support"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=backend)
