"""lm-eval on B'MOJO through lm-eval's own HFLM, offline: results structure and exact log-likelihoods."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets / lm_eval read their config
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install 'bmojo[eval]'")

import bmojo  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from bmojo.eval.lm_eval import OFFLINE_TASK, ascii_char_tokenizer, evaluate, main, make_lm  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(bmojo.preset_config("tiny")).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(15.0)  # far-from-uniform predictions, so log-likelihood checks mean something
    return model


def test_simple_evaluate_on_offline_task(model, tmp_path):
    lm = make_lm(model, ascii_char_tokenizer(), batch_size=16, device="cpu")
    results = evaluate(lm, [OFFLINE_TASK], output_path=tmp_path / "results.json", limit=4)
    acc = results["results"][OFFLINE_TASK]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert results["n-samples"][OFFLINE_TASK]["effective"] == 4
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["results"][OFFLINE_TASK]["acc,none"] == acc
    assert written["configs"][OFFLINE_TASK]["output_type"] == "multiple_choice"


def direct_loglikelihood(model, tokenizer, context, continuation):
    """Sum of log p(continuation token | prefix) from one plain forward pass."""
    context_ids = tokenizer(context).input_ids
    ids = torch.tensor([context_ids + tokenizer(continuation).input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    positions = range(len(context_ids), ids.shape[1])
    greedy = all(logprobs[t - 1].argmax().item() == ids[0, t].item() for t in positions)
    return sum(logprobs[t - 1, ids[0, t]].item() for t in positions), greedy


def test_loglikelihoods_match_a_direct_forward(model):
    """HFLM right-pads a batch of different lengths and passes no mask; scores must not notice."""
    tokenizer = ascii_char_tokenizer()
    lm = make_lm(model, tokenizer, batch_size=4, device="cpu")
    pairs = [("Question: What do bees make?\nAnswer:", " honey"),
             ("The quick brown fox jumps over the lazy dog, and then", " it rests."),
             ("ab", "c"),
             ("One, two, three, four, five, six, seven, eight, nine,", " ten")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                for i, pair in enumerate(pairs)]
    scores = lm.loglikelihood(requests)
    for (context, continuation), (ll, greedy) in zip(pairs, scores):
        want_ll, want_greedy = direct_loglikelihood(model, tokenizer, context, continuation)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy


def test_cli_on_a_saved_checkpoint(model, tmp_path):
    """The console script loads a package checkpoint by path, with the tokenizer saved beside it."""
    model.save_pretrained(tmp_path / "ckpt")
    ascii_char_tokenizer().save_pretrained(tmp_path / "ckpt")
    main(["--model", str(tmp_path / "ckpt"), "--tasks", OFFLINE_TASK, "--limit", "2", "--batch-size", "8",
          "--device", "cpu", "--dtype", "float32", "--output", str(tmp_path / "out" / "results.json")])
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert 0.0 <= written["results"][OFFLINE_TASK]["acc,none"] <= 1.0
