"""MQAR task (Zoology, Arora et al. 2023), its training loop, the comparison runner and `bmojo demo`."""

import json
import os
import re
import tempfile
from dataclasses import replace

import pytest
import torch

import bmojo
from bmojo import cli
from bmojo.eval import mqar


def _task(**kw):
    base = dict(vocab_size=64, seq_len=64, num_pairs=8, num_train=256, num_test=64, seed=3)
    return mqar.MQARTask(**{**base, **kw})


def _check_row(task, ids, labels):
    pairs = task.num_pairs
    keys, values = ids[0:2 * pairs:2].tolist(), ids[1:2 * pairs:2].tolist()
    assert len(set(keys)) == pairs and len(set(values)) == pairs
    assert all(1 <= k <= task.key_range for k in keys)
    assert all(task.key_range < v <= 2 * task.key_range for v in values)
    answer_pos = (labels != -100).nonzero().flatten().tolist()
    assert len(answer_pos) == task.num_queries
    asked = []
    for p in answer_pos:
        key = int(ids[p - 1])
        assert (p - 1 - 2 * pairs - task.gap) % 2 == 0, "a query key starts a two-token slot"
        assert p - 1 >= 2 * pairs + task.gap, "queries come after the key-value pairs and the gap"
        assert key in keys, "a queried key appears earlier in the sequence"
        assert int(labels[p]) == values[keys.index(key)], "the label is the queried key's value"
        # the answer is in the input after its key on the "shown" layout, hidden (filler) on Zoology's
        assert int(ids[p]) == (int(labels[p]) if task.layout == "shown" else mqar.FILLER)
        asked.append(key)
    assert len(set(asked)) == len(asked)
    if task.layout == "zoology":  # the first num_queries listed pairs are the ones asked
        assert sorted(asked) == sorted(keys[:task.num_queries])
    rest = torch.ones_like(ids, dtype=torch.bool)
    rest[:2 * pairs] = False
    rest[[p for a in answer_pos for p in (a - 1, a)]] = False
    assert bool((ids[rest] == mqar.FILLER).all())


@pytest.mark.parametrize("kw", [{}, dict(num_queries=3), dict(num_pairs=16, vocab_size=33),
                                dict(seq_len=100), dict(gap=40, num_pairs=4), dict(gap=31, num_pairs=4),
                                dict(layout="zoology"), dict(layout="zoology", num_queries=3, gap=9)])
def test_generator_well_formed(kw):
    task = _task(**kw)
    train, test = mqar.make_splits(task)
    assert train["input_ids"].shape == (task.num_train, task.seq_len)
    assert test["labels"].shape == (task.num_test, task.seq_len)
    for split in (train, test):
        for ids, labels in zip(split["input_ids"][:32], split["labels"][:32]):
            _check_row(task, ids, labels)


def test_zoology_layout_draws_query_slots_from_its_power_law():
    """Zoology's slots: weight a * x^(a - 1) (a = 0.01) for the 1-based slot x, drawn without replacement, so
    the first slot is the most used and use falls with the index; the "shown" layout's are uniform."""
    def slot_counts(layout):
        task = _task(layout=layout, num_pairs=4, num_train=4000, seq_len=64)
        labels = mqar.make_splits(task)[0]["labels"]
        pos = (labels != -100).nonzero()[:, 1]  # answer positions: slot s holds positions 8 + 2s, 9 + 2s
        return torch.bincount((pos - 9) // 2, minlength=28).float()

    zoo, uniform = slot_counts("zoology"), slot_counts("shown")
    assert zoo[0] > 2 * zoo[4] > 2 * zoo[27]  # decreasing with the slot index, about like 1 / x
    assert zoo[:4].sum() > 0.35 * zoo.sum()  # 4 of 28 slots take well over their uniform share (1 / 7)
    assert uniform.min() > 0.7 * uniform.mean()  # every slot about equally often
    with pytest.raises(ValueError, match="layout must be one of"):
        _task(layout="random")


def test_gap_leaves_filler_between_pairs_and_queries():
    """With a gap, the first `gap` tokens after the pairs are filler in every row, and some query uses the
    first slot after them (the region starts there, not later)."""
    task = _task(num_pairs=4, gap=40, num_train=64)
    ids = mqar.make_splits(task)[0]["input_ids"]
    assert bool((ids[:, 8:48] == mqar.FILLER).all())
    assert bool((ids[:, 48] != mqar.FILLER).any())


def test_progress_bar_has_a_total():
    """The training bar knows its length, so it shows an ETA."""
    tqdm = pytest.importorskip("tqdm.auto")
    bar = mqar._progress(iter(range(3)), True, "x", total=3)
    assert isinstance(bar, tqdm.tqdm) and bar.total == 3
    bar.close()


def test_splits_disjoint_and_seeded():
    task = _task(num_train=2000, num_test=500)
    train, test = mqar.make_splits(task)
    train_rows = {tuple(r) for r in train["input_ids"].tolist()}
    assert not any(tuple(r) in train_rows for r in test["input_ids"].tolist())
    again, _ = mqar.make_splits(task)
    assert torch.equal(again["input_ids"], train["input_ids"])
    other, _ = mqar.make_splits(_task(num_train=2000, num_test=500, seed=4))
    assert not torch.equal(other["input_ids"], train["input_ids"])


def test_generate_excludes_given_rows():
    """With a set that holds every row a seed would give, exclusion must skip all of them."""
    task = _task()
    first, _ = mqar._generate(task, 64, seed=11)
    kept, _ = mqar._generate(task, 64, seed=11, exclude=mqar._row_hashes(first))
    assert not ({tuple(r) for r in kept.tolist()} & {tuple(r) for r in first.tolist()})


@pytest.mark.parametrize("kw, field", [
    (dict(seq_len=32), "seq_len"),
    (dict(seq_len=4096), "seq_len"),
    (dict(num_pairs=0), "num_pairs"),
    (dict(num_pairs=300, seq_len=2048), "num_pairs"),
    (dict(num_pairs=32, seq_len=64), "seq_len"),
    (dict(num_queries=9), "num_queries"),
    (dict(num_queries=0), "num_queries"),
    (dict(vocab_size=16), "vocab_size"),
    (dict(num_train=0), "num_train"),
    (dict(seed=-1), "seed"),
    (dict(seq_len=64.0), "seq_len"),
    (dict(gap=-1), "gap"),
    (dict(gap=33), "seq_len"),  # 16 + 33 + 16 > 64
])
def test_task_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        _task(**kw)


def test_train_args_validation():
    with pytest.raises(ValueError, match="steps"):
        mqar.TrainArgs(steps=0)
    with pytest.raises(ValueError, match="lr"):
        mqar.TrainArgs(lr=0.0)
    with pytest.raises(ValueError, match="schedule"):
        mqar.TrainArgs(schedule="linear")
    with pytest.raises(ValueError, match="weight_decay"):
        mqar.TrainArgs(weight_decay=-0.1)
    with pytest.raises(ValueError, match="compile.*inductor"):
        mqar.TrainArgs(compile="max-autotune")
    with pytest.raises(ValueError, match="family"):
        mqar.budget_overrides("rnn", 512, bmojo.preset_config("tiny"))


@pytest.mark.parametrize("schedule", mqar.SCHEDULES)
def test_schedules_shape(schedule, monkeypatch):
    """The learning rate each step actually used: cosine peaks after the warmup and decays to ~0;
    one-cycle rises from lr/25 to lr at 30% of the steps, then falls to ~lr/1e4."""
    seen = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    train, _ = mqar.make_splits(_task(vocab_size=32, num_pairs=4))
    args = mqar.TrainArgs(steps=20, batch_size=4, lr=1e-2, warmup=4, schedule=schedule, progress=False)
    mqar.train(_tiny_model(), train, args)
    assert len(seen) == 20
    peak = max(range(20), key=seen.__getitem__)
    assert seen[peak] == pytest.approx(1e-2)
    if schedule == "onecycle":
        assert seen[0] == pytest.approx(1e-2 / 25) and peak == 5  # round(0.3 * 20) - 1
    else:
        assert seen[0] == pytest.approx(1e-2 / 4) and peak == 3
    assert seen[-1] < 1e-3 * seen[peak] + 1e-2 * 0.03


def test_state_floats_formula():
    cfg = bmojo.preset_config("tiny")  # kv_heads 1, head_dim 16: 32 floats a token; SSM 4 heads * 16 * 8
    ssm = cfg.ssm_num_heads * cfg.ssm_head_dim * cfg.ssm_state_size
    assert mqar.state_floats(cfg, 100) == ssm + (8 + 8 + 16) * 32
    assert mqar.state_floats(bmojo.preset_config("transformer-tiny"), 100) == 100 * 32
    assert mqar.state_floats(bmojo.preset_config("swa-transformer-tiny"), 100) == 8 * 32
    assert mqar.state_floats(bmojo.preset_config("mamba2-tiny"), 100) == ssm


@pytest.mark.parametrize("family", ["bmojo", "bmojo-f", "mamba2", "swa-transformer"])
def test_budget_overrides_match_budget(family):
    args = mqar.ComparisonArgs()
    for budget in (512, 1024, 2048):
        assert mqar.state_floats(mqar.family_config(family, budget, args), 128) == budget


def _tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return bmojo.BMojoForCausalLM(bmojo.preset_config("tiny", vocab_size=32, **kw))


def test_training_reproducible():
    task = _task(vocab_size=32, num_pairs=4)
    train, test = mqar.make_splits(task)
    args = mqar.TrainArgs(steps=3, batch_size=8, progress=False)
    a, b = _tiny_model(), _tiny_model()
    la, lb = mqar.train(a, train, args), mqar.train(b, train, args)
    assert la == lb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert mqar.evaluate(a, test) == mqar.evaluate(b, test)


def test_compiled_training_equals_eager():
    """`compile` traces the forward and backward (aot_eager: the graphs Inductor would get, run by eager
    kernels) and must train the same weights as the eager loop."""
    task = _task(vocab_size=32, num_pairs=4)
    train, _ = mqar.make_splits(task)
    eager, compiled = _tiny_model(), _tiny_model()
    torch._dynamo.reset()
    losses_eager = mqar.train(eager, train, mqar.TrainArgs(steps=3, batch_size=8, progress=False))
    losses_compiled = mqar.train(compiled, train,
                                 mqar.TrainArgs(steps=3, batch_size=8, progress=False, compile="aot_eager"))
    assert losses_compiled == pytest.approx(losses_eager, rel=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_training_learns_above_chance():
    """A short run (about 30 s on 2 cores) must recall well above chance on unseen sequences."""
    task = mqar.MQARTask(**LEARN_TASK)
    train, test = mqar.make_splits(task)
    model = _tiny_model(hidden_size=64, intermediate_size=128)
    before = mqar.evaluate(model, test)
    mqar.train(model, train, mqar.TrainArgs(**LEARN_ARGS))
    after = mqar.evaluate(model, test)
    print(f"MQAR accuracy before {before:.3f}, after {after:.3f}, chance {task.chance:.3f}")
    assert after > 2 * task.chance and after > before + 0.1, (before, after, task.chance)


LEARN_TASK = dict(vocab_size=32, seq_len=64, num_pairs=4, num_train=10_000, num_test=300)
LEARN_ARGS = dict(steps=300, batch_size=32, lr=1e-2, warmup=20, progress=False)


def test_run_comparison_writes_outputs(tmp_path):
    args = mqar.ComparisonArgs(families=("bmojo", "mamba2", "transformer"), budgets=(512, 1024),
                               pair_counts=(4,),
                               seq_len=64, vocab_size=32, num_train=64, num_test=16,
                               model=dict(hidden_size=32, intermediate_size=64),
                               train=mqar.TrainArgs(steps=2, batch_size=8, progress=False),
                               extra_runs=(("bmojo M_e=0", "bmojo", dict(eidetic_capacity=0)),))
    rows = mqar.run_comparison(args, str(tmp_path), log=lambda msg: None)
    assert [r["label"] for r in rows] == ["bmojo", "bmojo", "mamba2", "mamba2", "transformer", "bmojo M_e=0"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    assert (tmp_path / "results.md").read_text().count("\n") == len(rows) + 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "mqar.png").stat().st_size > 0


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mqar.main(["--help"])
    assert exit_info.value.code == 0
    assert "MQAR" in capsys.readouterr().out


def test_cli_rejects_bad_family(capsys):
    assert mqar.main(["--families", "rnn", "--out", "unused"]) == 2
    assert "families" in capsys.readouterr().err


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--steps", "3", "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "logits identical" in text
    assert "generate() on 8 unseen prompts" in text
    # both models' accuracies on one line, then what they mean; both decoding states, equal, printed
    assert re.search(r"recall accuracy on \d+ unseen sequences: B'MOJO [01]\.\d{3}, "
                     r"sliding-window Transformer [01]\.\d{3}", text)
    assert "\nmeaning: " in text
    assert re.search(r"B'MOJO (\d+) floats .*sliding-window Transformer \1 floats", text)
    assert os.path.exists(out / "config.json")
    reloaded = bmojo.BMojoForCausalLM.from_pretrained(out)
    assert reloaded.config.model_type == "bmojo"
    assert f"the model is in {out}" in text  # where it wrote, as an absolute path


def test_demo_default_folder_is_new_and_temporary():
    """Without --out the demo writes into a fresh folder under the temporary directory, not the cwd."""
    first, second = cli.demo_folder(None, compare=False), cli.demo_folder(None, compare=True)
    try:
        for folder in (first, second):
            assert os.path.isdir(folder) and not os.listdir(folder)
            assert os.path.commonpath([folder, tempfile.gettempdir()]) == tempfile.gettempdir()
        assert first != second and os.path.basename(second).startswith("bmojo-demo-compare-")
    finally:
        os.rmdir(first)
        os.rmdir(second)


def test_bf16_training_steps_see_the_previous_update():
    # TrainArgs.bf16 autocasts each forward alone: one autocast context around the whole loop would keep
    # its cached bf16 casts of the initial weights, and every step would run the untrained model.
    import copy

    task = _task(num_train=64)
    train, _ = mqar.make_splits(task)
    args = mqar.TrainArgs(steps=2, batch_size=8, lr=1e-2, warmup=4, seed=0, progress=False, bf16=True)
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(bmojo.preset_config("transformer-tiny", vocab_size=64))
    after_one = copy.deepcopy(model)
    untrained = copy.deepcopy(model)
    losses = mqar.train(model, train, args)
    mqar.train(after_one, train, replace(args, steps=1))  # the same first step (same lr at step 0)
    second = list(mqar._batches(64, args))[1]

    def loss_of(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return float(m(input_ids=train["input_ids"][second], labels=train["labels"][second],
                           use_cache=False).loss)

    assert losses[1] == pytest.approx(loss_of(after_one), abs=1e-6)
    assert abs(loss_of(untrained) - loss_of(after_one)) > 1e-3  # so a stale-weight step would be caught
    with pytest.raises(ValueError, match="TrainArgs.bf16"):
        mqar.TrainArgs(bf16="yes")


def test_demo_baseline_cannot_see_the_pairs_and_bmojo_can():
    """The demo's point by construction: equal decoding state, and the sliding-window baseline's logits at
    every query are blind to the key-value pairs (its stacked windows end before them), while B'MOJO's
    are not (its eidetic store holds them). Untrained models: this is about reach, not learning."""
    task = mqar.MQARTask(seed=0, **{**cli.DEMO_TASK, "num_train": 4, "num_test": 4})
    test = mqar.make_splits(task)[1]
    ids, labels = test["input_ids"], test["labels"]
    bmojo_config, baseline_config = cli.demo_configs()
    assert mqar.state_floats(bmojo_config, task.seq_len) == mqar.state_floats(baseline_config, task.seq_len)
    assert cli.baseline_reach(baseline_config) < task.gap + 1
    changed = ids.clone()
    keys = changed[:, 0:2 * task.num_pairs:2]
    changed[:, 0:2 * task.num_pairs:2] = 1 + keys % task.key_range  # every pair's key replaced by another
    query_keys = (labels != -100).roll(-1, dims=1)  # the positions that predict the values
    for config, blind in ((baseline_config, True), (bmojo_config, False)):
        torch.manual_seed(0)
        model = bmojo.BMojoForCausalLM(config).eval()
        with torch.no_grad():
            a, b = model(ids).logits[query_keys], model(changed).logits[query_keys]
        assert torch.equal(a, b) == blind, config.mixer_types
