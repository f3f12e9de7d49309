"""bmojo.eval.parity: issue 12's MQAR parity runner (rows x seeds, JSON + Markdown, errors kept per job)."""

import json

import pytest

from bmojo.eval import parity

TINY = ["--steps", "20", "--num-train", "256", "--num-test", "64"]


def test_two_rows_one_seed_write_json_and_markdown(tmp_path, capsys):
    argv = ["--rows", "hf-llama,mamba2-hf-like", "--seeds", "0", *TINY, "--out", str(tmp_path)]
    assert parity.main(argv) == 0
    out = json.loads((tmp_path / "parity.json").read_text())
    assert out["command"] == "python -m bmojo.eval.parity " + " ".join(argv)
    assert out["environment"]["device"].startswith("cpu") and out["environment"]["precision"] == "float32"
    assert out["date"][:2] == "20" and out["setting"]["steps"] == 20 and out["setting"]["lr"] == 1e-3
    assert [r["row"] for r in out["summary"]] == ["hf-llama", "mamba2-hf-like"]
    for row in out["summary"]:
        assert row["seeds_done"] == 1 and row["errors"] == []
        assert row["params"] > 0 and 0.0 <= row["min"] == row["mean"] == row["max"] <= 1.0
        assert list(row["per_seed"]) == ["0"]
    jobs = {j["row"]: j for j in out["jobs"]}
    assert jobs["mamba2-hf-like"]["config"]["ssm_a_init"] == "arange"
    assert jobs["mamba2-hf-like"]["config"]["intermediate_size"] == 0
    assert jobs["hf-llama"]["config"]["class"] == "LlamaForCausalLM"
    assert all(j["error"] is None and j["final_loss"] > 0 for j in out["jobs"])
    md = (tmp_path / "parity.md").read_text()
    assert out["command"] in md and "| row | params | mean | min | max | per seed |" in md
    assert md.count("\n| hf-llama |") == 1 and md.count("\n| mamba2-hf-like |") == 1
    printed = capsys.readouterr().out
    assert "[  1/2]" in printed and "[  2/2]" in printed and "ETA" in printed


def test_unknown_row_raises_naming_the_allowed_rows(capsys):
    with pytest.raises(ValueError, match=r"rows must be .* among \('hf-llama', 'hf-mamba2', .*'bmojo-f'"):
        parity.check_rows(["hf-llama", "llama"])
    assert parity.main(["--rows", "llama"]) == 2
    assert "hf-mamba2" in capsys.readouterr().err


def test_a_failing_job_is_recorded_in_its_row_and_the_run_goes_on(tmp_path, monkeypatch):
    real = parity.build_model

    def build(row, setting):
        if row == "hf-llama":
            raise RuntimeError("boom")
        return real(row, setting)

    monkeypatch.setattr(parity, "build_model", build)
    setting = parity.ParitySetting(steps=2, num_train=64, num_test=16)
    summary = parity.run_parity(["hf-llama", "full_attention"], (0,), setting, out_dir=str(tmp_path),
                                log=lambda *a: None)
    failed, ok = summary
    assert failed["seeds_done"] == 0 and failed["mean"] is None
    assert "RuntimeError: boom" in failed["errors"][0]
    assert ok["seeds_done"] == 1 and not ok["errors"]
    assert "RuntimeError: boom" in (tmp_path / "parity.md").read_text()


def test_hf_rows_match_our_rows_in_size():
    # The HF references are sized like ours: parameter for parameter where the block layout is the same.
    setting = parity.ParitySetting()

    def params(row):
        return sum(p.numel() for p in parity.build_model(row, setting)[0].parameters())

    assert params("hf-llama") == params("full_attention-untied")
    assert params("hf-mamba2") == params("mamba2-hf-like")
    hf_mamba2 = parity.build_model("hf-mamba2", setting)[0].config
    assert (hf_mamba2.num_heads, hf_mamba2.head_dim, hf_mamba2.state_size) == (4, 32, 16)


def test_resume_keeps_finished_jobs_and_runs_only_the_rest(tmp_path, monkeypatch):
    setting = parity.ParitySetting(steps=2, num_train=64, num_test=16)
    first = tmp_path / "first"
    parity.run_parity(["full_attention"], (0,), setting, out_dir=str(first), log=lambda *a: None)
    ran = []
    real = parity.run_job

    def counted(row, seed, *rest):
        ran.append((row, seed))
        return real(row, seed, *rest)

    monkeypatch.setattr(parity, "run_job", counted)
    summary = parity.run_parity(["full_attention", "hf-llama"], (0,), setting, out_dir=str(tmp_path / "2nd"),
                                log=lambda *a: None, resume=str(first / "parity.json"))
    assert ran == [("hf-llama", 0)] and [r["seeds_done"] for r in summary] == [1, 1]
    earlier = json.loads((first / "parity.json").read_text())["summary"][0]["mean"]
    assert summary[0]["mean"] == earlier
    with pytest.raises(ValueError, match="same setting"):
        parity.run_parity(["hf-llama"], (0,), parity.replace(setting, steps=3), out_dir=str(tmp_path / "3rd"),
                          resume=str(first / "parity.json"))
