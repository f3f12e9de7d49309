"""Zoology's tuning protocol (bmojo.eval.sweep): the sweep picks the best learning rate, the seeds
run at that rate, and the summary reports their mean and range. A short MQAR run of every model
family learns above chance (the objective the protocol is run with)."""

import math

import pytest

import bmojo
from bmojo.eval import mqar, sweep

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


class Recorder:
    """A cheap objective: accuracy peaks at `peak` (in log-lr) and moves a little with the seed."""

    def __init__(self, peak=1e-3, seed_effect=0.01, loss=None):
        self.peak, self.seed_effect, self.loss, self.calls = peak, seed_effect, loss, []

    def __call__(self, lr, seed):
        self.calls.append((lr, seed))
        accuracy = 0.9 - 0.2 * abs(math.log10(lr) - math.log10(self.peak)) + self.seed_effect * seed
        row = dict(accuracy=accuracy)
        if self.loss is not None:
            row["final_loss"] = self.loss(lr)
        return row


@pytest.mark.parametrize("peak", LRS)
def test_sweep_picks_the_best_learning_rate(peak):
    rows, best = sweep.lr_sweep(Recorder(peak), LRS)
    assert best == peak
    assert [r["lr"] for r in rows] == list(LRS)
    assert all(r["seed"] == 0 for r in rows)


def test_ties_in_accuracy_go_to_the_lower_loss():
    """Several rates at 1.000 is common on MQAR: the lower final loss decides."""
    def flat(lr, seed):
        return dict(accuracy=1.0, final_loss={1e-4: 0.3, 3e-4: 0.2, 1e-3: 0.05, 3e-3: 0.1}[lr])

    assert sweep.lr_sweep(flat, (1e-4, 3e-4, 1e-3, 3e-3))[1] == 1e-3


def test_nan_loss_or_accuracy_never_wins():
    rows = [dict(lr=1e-2, accuracy=float("nan"), final_loss=float("nan")),
            dict(lr=1e-3, accuracy=0.5, final_loss=float("nan")),
            dict(lr=3e-4, accuracy=0.5, final_loss=1.0)]
    assert sweep.best_learning_rate(rows) == 3e-4


def test_exact_tie_keeps_sweep_order():
    def same(lr, seed):
        return dict(accuracy=0.2, final_loss=2.0)

    assert sweep.lr_sweep(same, (3e-3, 1e-3, 1e-2, 1e-4))[1] == 3e-3


def test_protocol_runs_seeds_at_best_and_summarises():
    objective = Recorder(peak=3e-3, seed_effect=0.05)
    result = sweep.zoology_protocol(objective, LRS, seeds=(0, 1, 2))
    assert result.best_lr == 3e-3
    assert [(r["lr"], r["seed"]) for r in result.runs] == [(3e-3, 0), (3e-3, 1), (3e-3, 2)]
    # The sweep's seed-0 run at the best rate is reused, not trained twice.
    assert objective.calls == [(lr, 0) for lr in LRS] + [(3e-3, 1), (3e-3, 2)]
    assert result.mean == pytest.approx(0.95)
    assert (result.low, result.high) == (pytest.approx(0.9), pytest.approx(1.0))
    summary = result.summary()
    assert summary["best_lr"] == 3e-3 and len(summary["sweep"]) == len(LRS) and len(summary["runs"]) == 3


def test_protocol_with_sweep_seed_outside_seeds():
    objective = Recorder(peak=1e-4)
    result = sweep.zoology_protocol(objective, LRS, seeds=(1, 2), sweep_seed=7)
    assert result.best_lr == 1e-4
    assert objective.calls == [(lr, 7) for lr in LRS] + [(1e-4, 1), (1e-4, 2)]


@pytest.mark.parametrize("lrs, match", [
    ((1e-3, 3e-3, 1e-2), "at least 4"),
    ((1e-3, 1e-3, 3e-3, 1e-2), "at least 4"),
    ((1e-3, 3e-3, 1e-2, 0.0), "> 0"),
    ((1e-3, 3e-3, 1e-2, float("nan")), "> 0"),
])
def test_learning_rates_validated(lrs, match):
    with pytest.raises(ValueError, match="learning_rates.*" + match):
        sweep.lr_sweep(Recorder(), lrs)


@pytest.mark.parametrize("seeds", [(), (0, 0), (-1,), (1.0,)])
def test_seeds_validated(seeds):
    with pytest.raises(ValueError, match="seeds"):
        sweep.zoology_protocol(Recorder(), LRS, seeds=seeds)


def test_protocol_table_on_a_tiny_mqar_run():
    """The real objective end to end (2 steps a run): one row per model, best lr among those swept."""
    task = mqar.MQARTask(vocab_size=32, seq_len=64, num_pairs=4, num_train=64, num_test=16)
    configs = {"bmojo": bmojo.preset_config("tiny", vocab_size=32),
               "mamba2": bmojo.preset_config("mamba2-tiny", vocab_size=32)}
    args = mqar.TrainArgs(steps=2, batch_size=8, warmup=0, progress=False)
    rows = sweep.protocol_table(configs, task, args, LRS[:4], seeds=(0, 1))
    assert [r["label"] for r in rows] == ["bmojo", "mamba2"]
    for row in rows:
        assert row["best_lr"] in LRS[:4] and len(row["sweep"]) == 4 and len(row["runs"]) == 2
        assert row["low"] <= row["mean"] <= row["high"]
        assert row["best_lr"] == sweep.best_learning_rate(row["sweep"])
    table = sweep.markdown_protocol_table(rows)
    assert table.count("\n") == 2 + len(rows)
