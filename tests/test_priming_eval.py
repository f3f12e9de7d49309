"""The priming experiment (bmojo.eval.priming) end to end on a tiny synthetic text, a few steps per stage."""

import json
import random

import pytest

from bmojo.eval import priming

TINY = ["--seq-len", "16", "--window-size", "8", "--fading-tokens", "8", "--eidetic-capacity", "8",
        "--eidetic-tokens-per-chunk", "2", "--hidden-size", "32", "--heads", "2", "--intermediate-size", "64",
        "--teacher-steps", "3", "--distill-steps", "2", "--finetune-steps", "2", "--scratch-steps", "2",
        "--factors", "1,2,4", "--max-eval-tokens", "256"]
ROWS = ("transformer", "primed, before training", "primed, after stage 1 (distillation)",
        "primed, after stage 2 (LM fine-tuning)", "transformer, + S2 steps (control)",
        "B'MOJO from scratch (control)")


def _folder(tmp_path):
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while one cat sleeps in the warm sun".split()
    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(600)))
    return folder


def test_priming_runs_end_to_end_and_reports_every_stage(tmp_path):
    out = tmp_path / "out"
    assert priming.main([str(_folder(tmp_path)), "--out", str(out), *TINY]) == 0
    report = json.loads((out / "results.json").read_text())
    assert tuple(report["models"]) == ROWS
    for label, model in report["models"].items():
        assert [r["factor"] for r in model["rows"]] == [1, 2, 4], label
        assert [r["length"] for r in model["rows"]] == [16, 32, 64], label
    assert [report["models"][k]["steps"] for k in ROWS] == [3, 0, 2, 4, 5, 2]
    assert report["models"]["transformer"]["tokens"] == 3 * 8 * 16
    # Where the window covers the input (length w = 8: fading band and store still empty), the primed
    # model before any training computes the Transformer.
    check = report["exactness_check"]
    assert check["length"] == 8
    assert check["primed, before training"] == pytest.approx(check["transformer"], rel=1e-5)
    # At T = 2w it does not (the window no longer covers the input): the experiment is not trivial.
    first = {k: report["models"][k]["rows"][0]["ppl"] for k in ROWS[:2]}
    assert first["primed, before training"] != pytest.approx(first["transformer"], rel=1e-5)
    assert isinstance(report["target"]["met"], bool) and report["target"]["summary"].startswith("Target")
    assert "8x was not measured" in report["target"]["summary"]  # only 1x..4x asked for
    md = (out / "results.md").read_text()
    assert report["command"].startswith("python -m bmojo.eval.priming ") and report["command"] in md
    assert all(label in md for label in ROWS) and report["target"]["summary"] in md


VALID = dict(seq_len=16, window_size=8, eidetic_tokens_per_chunk=2, hidden_size=32, heads=2)


@pytest.mark.parametrize("change, field", [
    (dict(window_size=16), "window_size"),  # covers T = 16: the trivial experiment is refused
    (dict(window_size=0), "window_size"),
    (dict(eidetic_tokens_per_chunk=9), "eidetic_tokens_per_chunk"),
    (dict(teacher_steps=0), "teacher_steps"),
    (dict(heads=3), "heads"),
    (dict(factors=(2, 4)), "factors"),
    (dict(distill_lr=0.0), "distill_lr"),
    (dict(scratch_steps=-1), "scratch_steps"),
])
def test_bad_settings_raise_naming_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        priming.PrimingSettings(**{**VALID, **change}).check()
    priming.PrimingSettings(**VALID).check()  # the same settings without the change are accepted


def test_cli_reports_bad_arguments_and_exits_2(tmp_path, capsys):
    assert priming.main([str(_folder(tmp_path)), "--out", str(tmp_path / "out"), "--seq-len", "16",
                         "--window-size", "32"]) == 2
    assert "window_size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
