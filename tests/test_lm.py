"""Byte-level LM training and the perplexity evaluator (bmojo.eval.lm)."""

import json
import math

import pytest
import torch

import bmojo
from bmojo.eval import lm


def _folder(tmp_path):
    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    with open(tmp_path / "b.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"text": f"document {i}: naïve café {i * i}"}) + "\n")
    (tmp_path / "ignored.csv").write_text("x,y")
    return tmp_path


def _model(name):
    torch.manual_seed(0)
    return bmojo.BMojoForCausalLM(bmojo.preset_config(name, vocab_size=lm.VOCAB_SIZE))


def test_bytes_round_trip_and_folder(tmp_path):
    text = "naïve café ✓"
    assert lm.decode(lm.encode(text)) == text
    assert min(lm.encode(text)) >= lm.SPECIAL
    docs = lm.read_folder(_folder(tmp_path))
    assert len(docs) == 11 and docs[1].startswith("document 0")
    stream = lm.token_stream(docs)
    assert int((stream == lm.EOS).sum()) == 11
    with pytest.raises(ValueError, match="no .txt"):
        lm.read_folder(_empty(tmp_path))


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


@pytest.mark.parametrize("name", ["transformer-tiny", "tiny"])
def test_perplexity_matches_direct_loss(tmp_path, name):
    stream = lm.token_stream(lm.read_folder(_folder(tmp_path)))
    model = _model(name).eval()
    got = lm.perplexity(model, stream, length=64, batch_size=3)
    blocks = stream[: len(stream) // 64 * 64].view(-1, 64)
    with torch.no_grad():
        losses = []
        for block in blocks:
            out = model(input_ids=block[None], labels=block[None], use_cache=False)
            # B'MOJO's loss adds the innovation loss; the LM part is the rest.
            losses.append(float(out.loss - (out.innovation_loss if out.innovation_loss is not None else 0)))
    direct = sum(losses) / len(losses)  # equal-length blocks: the mean of means is the token mean
    assert got["tokens"] == blocks.shape[0] * 63
    assert got["nll"] == pytest.approx(direct, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(direct), rel=1e-5)


def test_length_generalization_rows(tmp_path):
    stream = lm.token_stream(lm.read_folder(_folder(tmp_path)))
    rows = lm.length_generalization(_model("tiny"), stream, train_len=32, factors=(1, 2, 4, 64))
    assert [r["factor"] for r in rows] == [1, 2, 4]  # 64 * 32 tokens exceed the stream: stops there
    assert all(r["ppl"] > 1 for r in rows)


def test_train_lm_with_trainer(tmp_path):
    stream = lm.token_stream(lm.read_folder(_folder(tmp_path)))
    model = _model("tiny")
    before = lm.perplexity(model, stream, 32)["ppl"]
    lm.train_lm(model, stream, 32, str(tmp_path / "run"), max_steps=20, learning_rate=3e-3, use_cpu=True)
    assert lm.perplexity(model, stream, 32)["ppl"] < before
