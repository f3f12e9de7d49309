"""On CUDA: the model with Triton kernels computes the function of the PyTorch reference path
(forward, gradients, and prefill + decode). Skipped without a GPU."""

import pytest
import torch

import bmojo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pair(dtype, **overrides):
    torch.manual_seed(0)
    kwargs = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  window_size=64, fading_tokens=64, eidetic_tokens_per_chunk=8, eidetic_capacity=32,
                  vocab_size=1000, initializer_range=0.05)
    kwargs.update(overrides)
    fast = bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", use_kernels=True, **kwargs)).cuda().to(dtype)
    ref = bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", use_kernels=False, **kwargs)).cuda().to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)])
def test_kernels_match_reference_forward_and_backward(dtype, tol):
    fast, ref = pair(dtype)
    ids = torch.randint(0, 1000, (2, 700), device="cuda")
    out_f, out_r = fast(ids, labels=ids), ref(ids, labels=ids)
    err = rel(out_f.logits, out_r.logits)
    print(f"\n{dtype}: logits rel err {err:.2e}")
    assert err < tol
    out_f.loss.backward()
    out_r.loss.backward()
    worst = max(rel(pf.grad, pr.grad) for pf, pr in zip(fast.parameters(), ref.parameters())
                if pr.grad is not None and pr.grad.norm() > 0)
    print(f"{dtype}: worst parameter-gradient rel err {worst:.2e}")
    assert worst < 10 * tol


@torch.no_grad()
def test_prefill_then_decode_on_gpu():
    fast, _ = pair(torch.float32)
    ids = torch.randint(0, 1000, (2, 300), device="cuda")
    full = fast(ids).logits
    out = fast(ids[:, :170], use_cache=True)
    logits = [out.logits]
    for t in range(170, 300):
        logits.append(fast(ids[:, t:t + 1], past_key_values=out.past_key_values).logits)
    assert rel(torch.cat(logits, 1), full) < 1e-3
