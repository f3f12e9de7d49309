"""Values the layers of one parallel pass share (modeling_bmojo/common.py `shared_across_layers`): the column
positions, RoPE angles, real-token mask and count, last-token indices and the zero auxiliary loss, computed by
the first layer of an eager prefill or training forward and reused by the others. They must change nothing
but the number of launched ops."""

import contextlib

import pytest
import torch

import bmojo
from bmojo.modeling_bmojo import common, modeling
from conftest import CountOps, cache_of, left_padded_batch, training_step

MIXERS = ["bmojo", "mamba2", "sliding_attention", "full_attention", "bmojo"]


def sharing(patch, on):
    """The block as shipped (on) or a no-op (off): every layer then computes its own values."""
    if not on:
        patch.setattr(modeling, "shared_across_layers", contextlib.nullcontext)


def prefill(monkeypatch, on, layers=MIXERS):
    """A left-padded prefill into a new cache: logits, innovation loss, every state tensor, ops dispatched."""
    torch.manual_seed(0)
    config = bmojo.preset_config("tiny", initializer_range=0.2, use_kernels=False,
                                 num_hidden_layers=len(layers), mixer_types=layers)
    model = bmojo.BMojoForCausalLM(config).eval()
    batch = left_padded_batch()
    with monkeypatch.context() as patch, torch.no_grad(), CountOps() as ops:
        sharing(patch, on)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=True)
    states = [t for state in cache_of(out).states for _, t in state.named_tensors()]
    return [out.logits, out.innovation_loss, *states], ops.count


def test_prefill_is_the_same_with_shared_values(monkeypatch):
    shared, shared_ops = prefill(monkeypatch, True)
    fresh, fresh_ops = prefill(monkeypatch, False)
    assert len(shared) == len(fresh)
    for a, b in zip(shared, fresh):
        assert torch.equal(a, b)
    assert shared_ops < fresh_ops


def test_shared_values_save_ops_in_every_layer_after_the_first(monkeypatch):
    """Four B'MOJO layers: each layer after the first dispatches at least 15 ops fewer than it would alone
    (its positions, angles, masks, counts, last-token indices and zero loss come from the first)."""
    _, shared_ops = prefill(monkeypatch, True, ["bmojo"] * 4)
    _, fresh_ops = prefill(monkeypatch, False, ["bmojo"] * 4)
    assert fresh_ops - shared_ops >= 3 * 15, (fresh_ops, shared_ops)


def test_training_step_is_the_same_with_shared_values(monkeypatch):
    shared = training_step("tiny", monkeypatch, sharing, True)
    fresh = training_step("tiny", monkeypatch, sharing, False)
    assert len(shared) == len(fresh)
    for a, b in zip(shared, fresh):
        assert torch.equal(a, b)


def test_values_are_shared_per_lengths_tensor_and_only_inside_the_block():
    lengths, same_values = torch.tensor([3, 5]), torch.tensor([3, 5])
    assert common.real_tokens(lengths, 6) is not common.real_tokens(lengths, 6)  # outside: computed each time
    with common.shared_across_layers():
        real = common.real_tokens(lengths, 6)
        assert common.real_tokens(lengths, 6) is real
        other = common.real_tokens(same_values, 6)  # another tensor: its own value, whatever it holds
        assert other is not real and torch.equal(other, real)
        assert common.real_tokens(lengths, 7).shape == (2, 7)
        assert common.real_token_count(lengths, 6).item() == 8
        idx, valid = common._last_positions(lengths, 4)
        assert idx.tolist() == [[0, 0, 1, 2], [1, 2, 3, 4]] and valid.tolist() == [[False, True, True, True],
                                                                                  [True] * 4]
    with common.shared_across_layers():  # a new block starts empty
        assert common.real_tokens(lengths, 6) is not real


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_training_step_is_the_same_with_shared_values(monkeypatch, reentrant):
    """Under gradient checkpointing every layer's forward runs twice, the second time (in the backward)
    outside the block; layers return the same shared zero loss. Loss and gradients equal the unshared ones."""
    def step(on):
        torch.manual_seed(0)
        config = bmojo.preset_config("tiny", initializer_range=0.2, use_kernels=False,
                                     num_hidden_layers=len(MIXERS), mixer_types=MIXERS)
        model = bmojo.BMojoForCausalLM(config).train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        with monkeypatch.context() as patch:
            sharing(patch, on)
            loss = model(**left_padded_batch()).loss
            loss.backward()
        return [loss.detach(), *(p.grad for p in model.parameters() if p.grad is not None)]

    shared, fresh = step(True), step(False)
    assert len(shared) == len(fresh) > 1
    for a, b in zip(shared, fresh):
        assert torch.equal(a, b)
