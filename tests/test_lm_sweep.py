"""The LM sweep (bmojo.eval.lm_sweep): data preparation, the choice of the best learning rate, matched
sizes, and a short CPU run of every family that must learn above chance."""

import json
import math

import pytest
import torch

from bmojo.eval import lm, lm_sweep


def _job(ppl, error=None):
    return dict(valid=None if ppl is None else dict(ppl=ppl), error=error)


def test_best_lr_is_the_lowest_validation_perplexity():
    assert lm_sweep.best_lr({3e-4: _job(40.0), 1e-3: _job(31.5), 3e-3: _job(35.0)}) == 1e-3
    # a diverged (inf / nan) or failed job never wins; unfinished jobs are left out
    failed = _job(1.0, error="boom")
    assert lm_sweep.best_lr({3e-4: _job(40.0), 1e-3: _job(float("nan")), 3e-3: failed}) == 3e-4
    assert lm_sweep.best_lr({3e-4: _job(float("inf")), 1e-3: _job(50.0), 3e-3: None}) == 1e-3
    assert lm_sweep.best_lr({3e-4: None, 1e-3: _job(None)}) is None
    assert lm_sweep.best_lr({3e-4: _job(30.0), 1e-3: _job(30.0)}) == 3e-4  # a tie: the first given


def test_summary_marks_edges_and_incomplete_sweeps():
    def job(lr, ppl):
        return dict(row="bmojo", lr=lr, seed=0, error=None, params=10, valid=dict(ppl=ppl),
                    test=[dict(factor=1, ppl=ppl + 1)], final_train_loss=3.0)

    lrs = (3e-4, 1e-3, 3e-3)
    summary = lm_sweep.summarize([job(3e-4, 9.0), job(1e-3, 12.0)], ["bmojo"], lrs)[0]
    assert summary["best_lr"] == 3e-4 and summary["best_at_edge"] and not summary["complete"]
    assert summary["sweep"] == {"0.0003": 9.0, "0.001": 12.0, "0.003": None}
    assert summary["test"] == [dict(factor=1, ppl=10.0)]
    summary = lm_sweep.summarize([job(3e-4, 9.0), job(1e-3, 8.0), job(3e-3, 10.0)], ["bmojo"], lrs)[0]
    assert summary["best_lr"] == 1e-3 and not summary["best_at_edge"] and summary["complete"]


def test_settings_rows_and_lrs_are_checked():
    with pytest.raises(ValueError, match="at least 3"):
        lm_sweep.check_lrs((1e-3, 3e-3))
    with pytest.raises(ValueError, match="rows must be distinct names"):
        lm_sweep.check_rows(["bmojo", "gpt"])
    with pytest.raises(ValueError, match="tokens must be >= batch_size"):
        lm_sweep.check_setting(lm_sweep.LMSetting(data="x", seq_len=64, batch_size=2, tokens=100))
    with pytest.raises(ValueError, match="size must be one of"):
        lm_sweep.check_setting(lm_sweep.LMSetting(data="x", size="7b"))
    with pytest.raises(ValueError, match="factors must be integers"):
        lm_sweep.check_setting(lm_sweep.LMSetting(data="x", factors=(0,)))


def test_rows_are_matched_in_size_at_130m():
    """The 130m rows hold parameter counts within 10% of HF Llama's (at the sweep's 8,192-id vocabulary)."""
    setting = lm_sweep.LMSetting(data="x")
    params = {}
    for row in ("bmojo", "transformer", "mamba2-hf-like", "hf-llama"):
        with torch.device("meta"):
            model, _ = lm_sweep.build_model(row, setting, 8192)
        params[row] = sum(p.numel() for p in model.parameters())
    for row, count in params.items():
        assert abs(count / params["hf-llama"] - 1) < 0.10, params


def _corpus(folder, n=60):
    folder.mkdir()
    words = "the model reads a stream of tokens and keeps a fading memory plus an eidetic store".split()
    for i in range(n):
        text = " ".join(words[(i * 5 + j) % len(words)] for j in range(80)) + f" document {i}."
        (folder / f"{i:03d}.txt").write_text(text)
    return folder


def test_prepare_writes_disjoint_streams_that_decode_back(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    meta = lm_sweep.prepare(str(corpus), str(tmp_path / "data"), vocab_size=300, log=lambda *a: None)
    assert meta == lm_sweep.load_meta(str(tmp_path / "data"))
    streams = {name: lm_sweep.load_split(str(tmp_path / "data"), name) for name in lm_sweep.SPLITS}
    assert {k: len(v) for k, v in streams.items()} == meta["tokens"]
    assert all(len(v) > 0 for v in streams.values()) and meta["vocab_size"] == 300
    tokenizer = lm.BPETokenizer.load(str(tmp_path / "data" / "tokenizer.json"))
    # the three splits are the documents in order, cut twice: decoded, they give back the whole text
    text = "".join(tokenizer.decode(streams[name].tolist()) for name in lm_sweep.SPLITS)
    assert text == "".join(lm.read_folder(corpus))
    assert "document 59." in tokenizer.decode(streams["test"].tolist())  # the last document is held out
    with pytest.raises(ValueError, match="vocab_size must be in"):
        lm_sweep.prepare(str(corpus), str(tmp_path / "bad"), vocab_size=70_000)


@pytest.fixture
def one_thread():
    # jobs run in this process here: two intra-op threads on a 2-core machine with anything else running made
    # a tiny model's step 50x slower (2 s against 0.04 s), as the sweep's worker processes avoid
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_cpu_sweep_learns_above_chance_and_resumes(tmp_path, one_thread):
    corpus = _corpus(tmp_path / "corpus", n=120)
    data = str(tmp_path / "data")
    lm_sweep.prepare(str(corpus), data, vocab_size=300, log=lambda *a: None)
    setting = lm_sweep.LMSetting(data=data, size="tiny", seq_len=32, batch_size=8, tokens=32 * 8 * 40,
                                 factors=(1, 2), max_eval_tokens=1024, eval_tokens_per_batch=256)
    rows, lrs = ("bmojo", "hf-llama", "mamba2-hf-like"), (1e-3, 3e-3, 1e-2)
    lines = []
    out = tmp_path / "out"
    summary = lm_sweep.run_sweep(rows, lrs, setting, out_dir=str(out), log=lines.append)
    assert any("ETA" in line for line in lines)
    for row in summary:
        assert row["complete"] and row["best_lr"] in lrs
        ppl = {t["factor"]: t["ppl"] for t in row["test"]}
        assert set(ppl) == {1, 2} and all(math.isfinite(p) for p in ppl.values())
        # 300 ids: a model that learned nothing scores ~300; the corpus is 16 words in a fixed order
        assert ppl[1] < 30, (row["row"], ppl)
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["jobs"]) == 9 and all(j["error"] is None for j in saved["jobs"])
    for job in saved["jobs"]:  # the LM part of the logged loss: B'MOJO's innovation term taken out
        gap = job["final_train_loss"] - job["final_lm_loss"]
        assert gap == pytest.approx(job["final_innovation_loss"])
        assert (gap > 0) == (job["row"] == "bmojo"), job["row"]
    assert "| bmojo |" in (out / "results.md").read_text()
    # resuming the finished run runs nothing; a run of another setting refuses the file
    lines.clear()
    again = lm_sweep.run_sweep(rows, lrs, setting, out_dir=str(tmp_path / "again"),
                               resume=str(out / "results.json"), log=lines.append)
    assert lines[0].startswith("resumed 9 finished job(s)") and again == summary
    # two runs of disjoint rows (side by side on one device) resume into one
    for name, keep in (("a", {"bmojo"}), ("b", {"hf-llama", "mamba2-hf-like"})):
        part = dict(saved, jobs=[j for j in saved["jobs"] if j["row"] in keep])
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
    lines.clear()
    merged = lm_sweep.run_sweep(rows, lrs, setting, out_dir=str(tmp_path / "merged"),
                                resume=f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", log=lines.append)
    assert lines[0].startswith("resumed 9 finished job(s)") and merged == summary
    with pytest.raises(ValueError, match="same setting"):
        lm_sweep.run_sweep(rows, lrs, lm_sweep.LMSetting(**{**setting.__dict__, "tokens": 32 * 8 * 20}),
                           out_dir=str(tmp_path / "other"), resume=str(out / "results.json"),
                           log=lines.append)


def test_cli_reports_bad_input(tmp_path, capsys):
    assert lm_sweep.main(["run", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "meta.json" in capsys.readouterr().err
    assert lm_sweep.main(["run", str(tmp_path), "--lrs", "1e-3,3e-3", "--device", "cpu"]) == 2
    assert "at least 3" in capsys.readouterr().err


def test_eval_windows_spread_through_the_split():
    stream = torch.arange(1000)
    setting = lm_sweep.LMSetting(data="x", max_eval_tokens=400)
    spread = lm_sweep.eval_windows(stream, 100, setting)
    starts = spread.view(4, 100)[:, 0].tolist()
    assert starts == [0, 300, 600, 900] and spread[-1] == 999  # first window at the start, last at the end
    assert all((w == torch.arange(w[0], w[0] + 100)).all() for w in spread.view(4, 100))  # contiguous
    head_setting = lm_sweep.LMSetting(data="x", max_eval_tokens=400, eval_windows="head")
    head = lm_sweep.eval_windows(stream, 100, head_setting)
    assert head.tolist() == list(range(400))
    assert len(lm_sweep.eval_windows(stream[:150], 100, setting)) == 100  # one window when only one fits
    with pytest.raises(ValueError, match="eval_windows must be"):
        lm_sweep.check_setting(lm_sweep.LMSetting(data="x", eval_windows="middle"))
    # files written before eval_windows existed read their splits' heads: not resumable as spread
    old = {k: v for k, v in lm_sweep.LMSetting(data="x").__dict__.items() if k != "eval_windows"}
    assert lm_sweep._comparable(old) == lm_sweep._comparable({**old, "eval_windows": "head"})
    assert lm_sweep._comparable(old) != lm_sweep._comparable(lm_sweep.LMSetting(data="x").__dict__)


@pytest.mark.slow
def test_compiled_training_equals_eager(tmp_path, one_thread):
    """`--compile` trains through torch.compile (here the aot_eager backend, which traces the same graph
    without Inductor's code generation): the same job reaches the same perplexity as eagerly."""
    corpus = _corpus(tmp_path / "corpus", n=40)
    data = str(tmp_path / "data")
    lm_sweep.prepare(str(corpus), data, vocab_size=300, log=lambda *a: None)
    setting = lm_sweep.LMSetting(data=data, size="tiny", seq_len=32, batch_size=4, tokens=32 * 4 * 6,
                                 factors=(1,), max_eval_tokens=256, eval_tokens_per_batch=128, lr=3e-3)
    from torch._dynamo.utils import counters

    eager = lm_sweep.run_job("bmojo", 0, setting)
    counters.clear()
    compiled_setting = lm_sweep.LMSetting(**{**setting.__dict__, "compile": "aot_eager"})
    compiled = lm_sweep.run_job("bmojo", 0, compiled_setting)
    assert counters["stats"]["unique_graphs"] >= 1  # the step did go through torch.compile
    assert eager["error"] is None and compiled["error"] is None, compiled["error"]
    assert compiled["valid"]["ppl"] == pytest.approx(eager["valid"]["ppl"], rel=1e-3)
    assert compiled["test"][0]["ppl"] == pytest.approx(eager["test"][0]["ppl"], rel=1e-3)
    with pytest.raises(ValueError, match="compile must be"):
        lm_sweep.check_setting(lm_sweep.LMSetting(data="x", compile="tensorrt"))
