"""bmojo.eval.zoology: MQAR against decoding-state size by Zoology's protocol (issue 13), and the parity
runner's state budgets it builds on. The protocol tests replace the training job by a function of (row, lr,
seed), so they check which jobs run and what is reported; one test trains real tiny models for two steps."""

import importlib.util
import json
from dataclasses import replace

import pytest

from bmojo.eval import parity, zoology

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
# accuracy of a fake job: each row has its own best learning rate, and seeds lower it a little
BEST = {"bmojo": 3e-3, "mamba2": 1e-2, "hf-llama": 1e-3}


def fake_job(calls):
    def job(row, seed, setting, device="cpu"):
        calls.append((row, setting.state_budget, setting.lr, seed))
        best = BEST.get(row, 3e-4)
        accuracy = (0.9 if setting.lr == best else 0.3) - 0.01 * seed + setting.state_budget / 1e5
        return dict(row=row, seed=seed, lr=setting.lr, accuracy=accuracy, final_loss=1.0 - accuracy,
                    params=10, state_floats=float(setting.state_budget or 8192), error=None, seconds=0.0,
                    config=parity.row_summary(row, setting))
    return job


def run(tmp_path, calls, **kw):
    groups = zoology.plan_groups(("bmojo", "mamba2"), (1024, 2048), ("hf-llama",), ("bmojo-me0",))
    setting = parity.ParitySetting(steps=2, num_train=64, num_test=16)
    return zoology.run_zoology(groups, LRS, (0, 1, 2), setting, out_dir=str(tmp_path),
                               run_job=fake_job(calls), log=lambda *_: None, **kw)


def test_each_group_sweeps_at_the_first_seed_then_runs_the_others_at_its_best_lr(tmp_path):
    calls = []
    summary = {r["group"]: r for r in run(tmp_path, calls)}
    assert len(calls) == len(set(calls))  # no job twice
    for row, budget in [("bmojo", 1024), ("bmojo", 2048), ("mamba2", 1024), ("mamba2", 2048),
                        ("hf-llama", 0)]:
        mine = [c for c in calls if c[:2] == (row, budget)]
        assert sorted(c[2] for c in mine if c[3] == 0) == sorted(LRS)  # the sweep, at seed 0
        assert {c[2] for c in mine if c[3] != 0} == {BEST[row]}  # seeds 1, 2 only at the best
        group = summary[f"{row}@{budget}" if budget else row]
        assert group["best_lr"] == BEST[row] and group["seeds_done"] == 3
        expected = [0.9 - 0.01 * s + budget / 1e5 for s in (0, 1, 2)]
        assert group["mean"] == pytest.approx(sum(expected) / 3)
        assert (group["min"], group["max"]) == pytest.approx((expected[2], expected[0]))
    # the ablation sweeps nothing: every seed at B'MOJO's best lr of its budget
    ablation = [c for c in calls if c[0] == "bmojo-me0"]
    expected = [("bmojo-me0", b, BEST["bmojo"], s) for b in (1024, 2048) for s in (0, 1, 2)]
    assert sorted(ablation) == sorted(expected)
    assert summary["bmojo-me0@2048"]["follows"] == "bmojo" and summary["bmojo-me0@2048"]["sweep"] is None

    out = json.loads((tmp_path / "results.json").read_text())
    assert len(out["jobs"]) == len(calls) and out["lrs"] == list(LRS)
    md = (tmp_path / "results.md").read_text()
    assert "| bmojo@2048 | 2048 |" in md and "0.003 (of bmojo)" in md
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "zoology.png").stat().st_size > 0


def test_resume_runs_only_the_jobs_not_finished(tmp_path):
    first = []
    run(tmp_path / "a", first)
    path = tmp_path / "a" / "results.json"
    data = json.loads(path.read_text())
    dropped = [j for j in data["jobs"] if j["group"] == "mamba2@2048" and j["seed"] == 2]
    data["jobs"] = [j for j in data["jobs"] if j not in dropped]
    path.write_text(json.dumps(data))
    again = []
    summary = run(tmp_path / "b", again, resume=str(path))
    assert again == [("mamba2", 2048, BEST["mamba2"], 2)]
    assert all(r["seeds_done"] == 3 for r in summary)
    with pytest.raises(ValueError, match="same setting"):
        groups = zoology.plan_groups(("bmojo",), (1024,))
        zoology.run_zoology(groups, LRS, (0,), replace(parity.ParitySetting(), num_pairs=4),
                            out_dir=str(tmp_path / "c"), resume=str(path), run_job=fake_job([]))


def test_a_time_limit_starts_no_job_after_it(tmp_path):
    calls = []
    summary = run(tmp_path, calls, time_limit=0)
    assert calls == [] and all(r["seeds_done"] == 0 for r in summary)


@pytest.mark.parametrize("rows,budgets,unbudgeted,ablation,match", [
    (("bmojo",), (0,), (), (), "budgets must be integers > 0"),
    (("full_attention",), (1024,), (), (), "no state budget split"),
    (("mamba2",), (1024,), (), ("bmojo-me0",), "add it to rows"),
    (("bmojo", "llama"), (1024,), (), (), "unknown 'llama'"),
    (("bmojo",), (1024,), (), ("bmojo-me-1",), "unknown 'bmojo-me-1'"),
    (("bmojo", "bmojo"), (1024,), (), (), "must not repeat"),
    (("bmojo",), (1024,), (), ("bmojo-me8@2048",), "one of the run's budgets"),
    (("bmojo",), (1024,), (), ("bmojo-me8@x",), "one of the run's budgets"),
    (("bmojo",), (1024,), (), ("bmojo-me8@1024", "bmojo-me8"), "must not repeat"),
])
def test_plan_refuses_what_it_cannot_run(rows, budgets, unbudgeted, ablation, match):
    with pytest.raises(ValueError, match=match):
        zoology.plan_groups(rows, budgets, unbudgeted, ablation)


def test_ablation_rows_run_at_every_budget_or_at_the_one_named():
    groups = zoology.plan_groups(("bmojo",), (1024, 4096), (), ("bmojo-me64@4096", "bmojo-me0"))
    assert [(g.name, g.follows) for g in groups] == [
        ("bmojo@1024", None), ("bmojo@4096", None), ("bmojo-me0@1024", "bmojo"),
        ("bmojo-me64@4096", "bmojo"), ("bmojo-me0@4096", "bmojo")]


def test_state_budget_sizes_every_row_and_hf_rows_match_ours():
    setting = replace(parity.ParitySetting(), state_budget=4096)
    bmojo = parity.our_config("bmojo", setting, None, "bmojo")
    # a quarter each: N = 1024 / (4 heads * 32), w = n_f = M_e = 1024 / (2 * 2 heads * 32) tokens
    sizes = (bmojo.ssm_state_size, bmojo.window_size, bmojo.fading_tokens, bmojo.eidetic_capacity)
    assert sizes == (8, 8, 8, 8)
    assert bmojo.eidetic_tokens_per_chunk == 4
    for ours, hf in [("mamba2", "hf-mamba2"), ("mamba2-untied", "hf-mamba2"), ("mamba2-hf-like", "hf-mamba2"),
                     ("sliding_attention", "hf-mistral")]:
        assert parity.state_floats(ours, setting) == parity.state_floats(hf, setting) == 4096
    assert parity.hf_config("mamba2", setting).state_size == 32
    assert parity.hf_config("mistral", setting).sliding_window == 32
    # the ablation row keeps B'MOJO's split and empties its store
    assert parity.state_floats("bmojo-me0", setting) == 4096 - 8 * 128
    assert parity.row_summary("bmojo-me0", setting)["eidetic_capacity"] == 0
    # budget 0: issue 12's sizes, as before budgets existed
    plain = parity.our_config("bmojo", parity.ParitySetting(), None, "bmojo")
    assert (plain.ssm_state_size, plain.window_size, plain.eidetic_capacity) == (16, 16, 32)


def test_command_line_trains_real_models_and_replots(tmp_path, capsys):
    argv = ["--rows", "bmojo", "--budgets", "1024", "--unbudgeted-rows", "hf-llama",
            "--lrs", "1e-3,3e-3,1e-2,3e-2", "--seeds", "0,1", "--steps", "2", "--num-train", "64",
            "--num-test", "16", "--out", str(tmp_path)]
    assert zoology.main(argv) == 0
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["command"] == "python -m bmojo.eval.zoology " + " ".join(argv)
    assert len(out["jobs"]) == 2 * (4 + 1) and not any(j["error"] for j in out["jobs"])
    states = {r["group"]: r["state_floats"] for r in out["summary"]}
    assert states == {"hf-llama": 8192.0, "bmojo@1024": 1024.0}
    (tmp_path / "results.md").unlink()
    assert zoology.main(["--replot", str(tmp_path / "results.json")]) == 0
    assert "| bmojo@1024 | 1024 |" in (tmp_path / "results.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "loss_curves.png").stat().st_size > 0
    assert zoology.main(argv[:4] + ["--lrs", "1e-3,1e-3"]) == 2
    assert "learning_rates must hold at least 4 distinct values" in capsys.readouterr().err


def test_loss_curve_panels_show_every_seed_at_the_best_lr_only():
    groups = zoology.plan_groups(("bmojo",), (1024,), ("hf-llama",))
    protocol = zoology.Protocol(groups, LRS, (0, 1))
    for lr in LRS:  # bmojo's sweep: 3e-3 is best; hf-llama's sweep is not finished (no best lr yet)
        acc = 0.9 if lr == 3e-3 else 0.2
        protocol.done[("bmojo@1024", lr, 0)] = dict(seed=0, lr=lr, accuracy=acc, final_loss=1 - acc,
                                                    loss_curve=[5.0, lr])
    protocol.done[("bmojo@1024", 3e-3, 1)] = dict(seed=1, lr=3e-3, accuracy=0.8, final_loss=0.2,
                                                  loss_curve=[5.0, 0.5])
    protocol.done[("hf-llama", 1e-3, 0)] = dict(seed=0, lr=1e-3, accuracy=0.5, final_loss=0.5,
                                                loss_curve=[5.0, 1.0])
    expected = [("bmojo@1024, lr 0.003", [(0, [5.0, 3e-3]), (1, [5.0, 0.5])])]
    assert zoology.loss_curve_panels(protocol) == expected
