"""The eidetic-capacity ablation (bmojo.eval.eidetic_ablation): it varies only the store, summarizes seeds
per capacity and refuses bad input."""

import json

import pytest
import torch

from bmojo import cli
from bmojo.eval import eidetic_ablation as ablation


def test_only_the_store_changes_and_capacity_zero_has_none():
    task = ablation.demo_task(0)
    demo, _ = cli.demo_configs()
    for capacity in (0, 3, 24):
        config = ablation.demo_config(capacity, task.vocab_size)
        assert config.eidetic_capacity == capacity
        differ = {k for k, v in config.to_dict().items() if demo.to_dict().get(k) != v}
        assert differ <= {"eidetic_capacity"}, differ
    # the demo's model is the capacity the demo uses
    assert ablation.demo_config(demo.eidetic_capacity, task.vocab_size).to_dict() == demo.to_dict()


def test_summary_groups_seeds_per_capacity_and_lr():
    def job(capacity, lr, seed, acc, error=None):
        return dict(capacity=capacity, lr=lr, seed=seed, accuracy=acc, error=error,
                    state_floats=100 + capacity, chance=0.1)

    jobs = [job(12, 3e-3, 1, 0.9), job(0, 3e-3, 0, 0.1), job(12, 3e-3, 0, 0.7), job(12, 1e-2, 0, 0.5),
            job(0, 3e-3, 1, 0.0, error="boom")]
    rows = ablation.summarize(jobs)
    assert [(r["capacity"], r["lr"]) for r in rows] == [(0, 3e-3), (12, 3e-3), (12, 1e-2)]
    twelve = rows[1]
    assert twelve["seeds"] == [0, 1] and twelve["accuracy"] == [0.7, 0.9]  # sorted by seed, paired
    assert twelve["mean"] == pytest.approx(0.8) and (twelve["low"], twelve["high"]) == (0.7, 0.9)
    assert rows[0]["accuracy"] == [0.1]  # the failed job is left out


def test_short_run_writes_results(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines = []
        setting = ablation.AblationSetting(steps=2, batch_size=8)
        summary = ablation.run_ablation((0, 4), (3e-3,), (0,), setting, out_dir=str(tmp_path),
                                        log=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert [r["capacity"] for r in summary] == [0, 4]
    assert summary[0]["state_floats"] < summary[1]["state_floats"]  # the store is decoding state
    assert any("ETA" in line for line in lines)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["jobs"]) == 2 and all(j["error"] is None for j in saved["jobs"])
    assert "| 4 | 0.003 |" in (tmp_path / "results.md").read_text()


def test_bad_input_is_refused(capsys):
    with pytest.raises(ValueError, match="capacities"):
        ablation.run_ablation((-1,), (3e-3,), (0,))
    with pytest.raises(ValueError, match="lrs"):
        ablation.run_ablation((0,), (0.0,), (0,))
    assert ablation.main(["--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
