"""MQAR accuracy against decoding-state size by Zoology's protocol, many small jobs at once (issue 13).

The paper's recall claim (B'MOJO recalls better than Mamba-2, sliding-window attention and hybrids at
equal decoding state) is a curve: accuracy against floats of state per layer. Each point of it here is a
*group*, one row (`parity.row_definition`: our families, HF references, B'MOJO with a given store) at one
state budget (`parity.ParitySetting.state_budget`, split as `mqar.budget_overrides` splits it). Every group
follows Zoology's protocol (Arora et al. 2023, `sweep`): its learning rate is swept at the first seed, the
best is kept (`sweep.best_learning_rate`: accuracy, then final loss), and the other seeds run at it. Rows
of the eidetic ablation (`--ablation`, e.g. `bmojo-me0`) change one knob of B'MOJO, so they take the `bmojo`
group's best learning rate at their budget and run every seed there.

Rows whose state does not follow a budget (full attention: the whole sequence; HF Llama) form one group
each (`--unbudgeted-rows`). Every job is `parity.run_job` (its own process, seed, data and model), so
results do not depend on how many run at once; a job's second phase is queued as soon as its group's sweep
has finished, and a run cut short by `--time-limit` can be continued with `--resume` (finished jobs of the
same setting are kept).

    python -m bmojo.eval.zoology --device cuda --workers 12 --budgets 2048,4096 \\
        --rows bmojo,bmojo-f,mamba2,sliding_attention,hybrid,hf-mamba2 \\
        --unbudgeted-rows full_attention,hf-llama \\
        --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 0,1,2 --ablation bmojo-me0 --out zoology_results

writes `results.json` (every job, the setting, command, device, date), `results.md` (per group: state floats,
best lr, mean / min / max accuracy over the seeds, the sweep), `zoology.png` and `loss_curves.png` (each
group's curves at its best lr), after every finished job.
"""

import argparse
import datetime
import functools
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace

from . import mqar, parity, sweep
from .parity import _fmt


@dataclass(frozen=True)
class Group:
    """One point of the curve: `row` at `budget` floats per layer (0: the row's own sizes). `follows` names
    the row whose best learning rate this group takes (the ablation), instead of sweeping its own."""

    row: str
    budget: int
    follows: str = None

    @property
    def name(self):
        return f"{self.row}@{self.budget}" if self.budget else self.row


def _ablation_groups(ablation, budgets):
    """`bmojo-me<M>` at every budget, or `bmojo-me<M>@<budget>` at that one budget (of `budgets`); budget by
    budget, in the order given."""
    specs = []  # (row, its one budget or None for all)
    for spec in ablation:
        row, _, at = spec.partition("@")
        if at and (not at.isdigit() or int(at) not in budgets):
            raise ValueError(f"ablation {spec!r}: the budget after '@' must be one of the run's budgets "
                             f"{list(budgets)}")
        specs.append((row, int(at) if at else None))
    return [Group(row, b, follows="bmojo") for b in budgets for row, at in specs if at in (None, b)]


def plan_groups(rows, budgets, unbudgeted_rows=(), ablation=()):
    """The groups of a run, checked: rows of `rows` at every budget, `unbudgeted_rows` once, `ablation` rows
    at every budget or, written `row@budget`, at one."""
    budgets = tuple(budgets)
    if not budgets or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in budgets):
        raise ValueError(f"budgets must be integers > 0 (floats of decoding state per layer), "
                         f"got {budgets!r}")
    ablation_groups = _ablation_groups(ablation, budgets)
    ablation_rows = tuple(dict.fromkeys(g.row for g in ablation_groups))
    parity.check_rows(tuple(rows) + tuple(unbudgeted_rows) + ablation_rows)
    for row in tuple(rows) + ablation_rows:
        if parity.budget_split(row) is None:
            raise ValueError(f"row {row!r} has no state budget split (parity.BUDGET_SPLIT); give it in "
                             "unbudgeted_rows")
    if ablation and "bmojo" not in rows:
        raise ValueError("ablation rows take the best learning rate of the 'bmojo' row: add it to rows")
    groups = [Group(row, 0) for row in unbudgeted_rows]  # first: the reference rows of the run
    groups += [Group(row, b) for b in budgets for row in rows]
    groups += ablation_groups
    if len({g.name for g in groups}) != len(groups):
        raise ValueError(f"rows must not repeat, got {[g.name for g in groups]}")
    return groups


def group_setting(base, group, lr):
    return replace(base, state_budget=group.budget, lr=lr)


class Protocol:
    """The protocol's bookkeeping, free of processes: which jobs can run now, and what each group measured.

    `done` maps (group name, lr, seed) to a finished job's result. `ready()` lists the jobs whose inputs are
    known (the sweep of every group from the start; its other seeds once its sweep is done; a follower's
    seeds once its leader's sweep is done) and not yet done."""

    def __init__(self, groups, lrs, seeds):
        self.groups = {g.name: g for g in groups}
        self.lrs = sweep._check_learning_rates(lrs)
        self.seeds = parity.check_seeds(seeds)
        self.done = {}

    def best_lr(self, group):
        """The best learning rate of a group's sweep at the first seed, or None while it is running."""
        if group.follows:
            return self.best_lr(self.groups[Group(group.follows, group.budget).name])
        rows = [self.done.get((group.name, lr, self.seeds[0])) for lr in self.lrs]
        if any(r is None for r in rows):
            return None
        scored = [dict(lr=r["lr"], accuracy=r["accuracy"] if r["accuracy"] is not None else float("nan"),
                       final_loss=r["final_loss"]) for r in rows]
        return sweep.best_learning_rate(scored)

    def ready(self):
        """Seed runs at a known best learning rate first (a group with all its seeds is a result; a sweep
        is not yet), then the sweeps, each in group order."""
        seed_runs, sweeps = [], []
        for group in self.groups.values():
            if not group.follows:
                sweeps += [(group, lr, self.seeds[0]) for lr in self.lrs]
            best = self.best_lr(group)
            if best is not None:
                seed_runs += [(group, best, seed) for seed in self.seeds]
        return [j for j in dict.fromkeys(seed_runs + sweeps) if (j[0].name, j[1], j[2]) not in self.done]

    def summary(self):
        table = []
        for group in self.groups.values():
            best = self.best_lr(group)
            keys = [(group.name, best, s) for s in self.seeds]
            runs = [self.done[k] for k in keys if k in self.done]
            acc = [r["accuracy"] for r in runs if r["accuracy"] is not None]
            any_job = next((r for k, r in self.done.items() if k[0] == group.name), {})
            sweep_rows = {format(lr, "g"): self.done.get((group.name, lr, self.seeds[0])) for lr in self.lrs}
            table.append(dict(
                group=group.name, row=group.row, budget=group.budget, follows=group.follows,
                state_floats=any_job.get("state_floats"), params=any_job.get("params"), best_lr=best,
                per_seed={r["seed"]: r["accuracy"] for r in runs}, seeds_done=len(acc),
                mean=parity._mean(acc), min=min(acc, default=None), max=max(acc, default=None),
                final_loss_mean=parity._mean([r["final_loss"] for r in runs if r["final_loss"] is not None]),
                sweep={lr: (None if r is None else dict(accuracy=r["accuracy"], final_loss=r["final_loss"]))
                       for lr, r in sweep_rows.items()} if not group.follows else None,
                errors=sorted(f"lr {k[1]:g} seed {k[2]}: {r['error'].splitlines()[0]}"
                              for k, r in self.done.items() if k[0] == group.name and r.get("error"))))
        return table


def run_zoology(groups, lrs, seeds, setting, device="cpu", workers=1, out_dir="zoology_results", command=None,
                time_limit=None, resume=None, log=None, run_job=None):
    """Runs the protocol for every group and writes results.json, results.md and the plots under `out_dir`
    after each finished job. `time_limit` (seconds): no job starts after it (running ones finish; the rest
    can be run later with `resume`, an earlier results.json of the same setting). `run_job` replaces
    `parity.run_job` (tests). Returns the per-group summary."""
    log = log or functools.partial(print, flush=True)
    protocol = Protocol(groups, lrs, seeds)
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(command=command or "run_zoology(...)",
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                environment=parity._environment(device), setting=asdict(setting), lrs=list(protocol.lrs),
                seeds=list(protocol.seeds), workers=workers, resumed_from=resume,
                groups=[asdict(g) for g in groups], plateau_accuracy=parity.plateau_accuracy(setting))
    if resume:
        protocol.done.update(load_finished(resume, setting, protocol.groups))
        log(f"resumed {len(protocol.done)} finished job(s) from {resume}")
    resumed, start = len(protocol.done), time.time()
    deadline = None if time_limit is None else start + time_limit

    def record(group, lr, seed, result):
        protocol.done[(group.name, lr, seed)] = dict(result, group=group.name, budget=group.budget)
        done, left = len(protocol.done) - resumed, len(protocol.ready())
        elapsed = time.time() - start
        what = f"ERROR {result['error'].splitlines()[0]}" if result.get("error") else (
            f"acc {result['accuracy']:.3f} loss {result['final_loss']:.3f}")
        # jobs are alike in cost, but later phases are not known yet: the ETA covers the jobs queued now
        log(f"[{done:>3} done, {left:>3} queued] {group.name:>24} lr {lr:<6g} seed {seed}: {what} "
            f"({result.get('seconds', 0):.0f} s) | elapsed {elapsed:.0f} s, "
            f"ETA {elapsed / done * left:.0f} s")
        write_results(out_dir, protocol, meta)

    job = run_job or parity.run_job
    if workers <= 1:
        while protocol.ready() and (deadline is None or time.time() < deadline):
            group, lr, seed = protocol.ready()[0]
            record(group, lr, seed, job(group.row, seed, group_setting(setting, group, lr), device))
    else:
        _run_pool(protocol, job, setting, device, workers, deadline, record)
    write_results(out_dir, protocol, meta)
    left = protocol.ready()
    log(f"done in {time.time() - start:.0f} s: {os.path.join(out_dir, 'results.md')}"
        + (f" ({len(left)} job(s) not run: continue with --resume)" if left else ""))
    return protocol.summary()


def _run_pool(protocol, job, setting, device, workers, deadline, record):
    """Keeps `workers` spawned one-thread processes busy, queueing each job as soon as it is ready."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    devices = parity.job_devices(device, 1 << 12)
    running, submitted = {}, 0
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=mqar._worker_init) as pool:
        while True:
            late = deadline is not None and time.time() > deadline
            if late:  # past the deadline: jobs not started are dropped, running ones finish
                for future in [f for f in running if f.cancel()]:
                    running.pop(future)
            queued = set(running.values())
            for group, lr, seed in ([] if late else protocol.ready()):
                if (group, lr, seed) in queued or len(running) >= workers + 2:
                    continue  # a bounded queue: a job not yet started can wait for a later, better-known plan
                future = pool.submit(job, group.row, seed, group_setting(setting, group, lr),
                                     devices[submitted % len(devices)])
                running[future], submitted = (group, lr, seed), submitted + 1
                queued.add((group, lr, seed))
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED,
                               timeout=None if deadline is None or late else max(1.0, deadline - time.time()))
            for future in finished:
                group, lr, seed = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:  # the worker process died (e.g. killed for memory)
                    result = dict(row=group.row, seed=seed, lr=lr, accuracy=None, final_loss=None,
                                  params=None, seconds=0.0,
                                  error=f"worker failed: {type(err).__name__}: {err}")
                record(group, lr, seed, result)


def load_finished(path, setting, groups):
    """{(group name, lr, seed): job} of an earlier results.json of the same setting (apart from the lr and
    budget, which each job records), for the jobs that finished without error and whose model is the one
    the row builds today; a ValueError for another setting."""
    with open(path) as f:
        earlier = json.load(f)
    ignore = ("lr", "state_budget")
    mine = {k: v for k, v in asdict(setting).items() if k not in ignore}
    theirs = {k: v for k, v in (earlier.get("setting") or {}).items() if k not in ignore}
    if mine != theirs:
        raise ValueError(f"resume file {path} has setting {earlier.get('setting')}, this run "
                         f"{asdict(setting)}: only a run of the same setting can be resumed")
    kept = {}
    for j in earlier["jobs"]:
        group = groups.get(j["group"])
        if group is None or j.get("error") or j.get("accuracy") is None:
            continue
        current = parity.row_summary(group.row, group_setting(setting, group, j["lr"]))
        if parity._same_config(j.get("config"), current):
            kept[(group.name, j["lr"], j["seed"])] = j
    return kept


# ---------------------------------------------------------------------------------------------
# Results: JSON, Markdown, plot
# ---------------------------------------------------------------------------------------------


def markdown(summary, meta):
    s, env = meta["setting"], meta["environment"]
    lrs = meta["lrs"]
    lines = [f"# MQAR accuracy against decoding state, Zoology's protocol ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"Device: {env['device']}; {env['precision']}; torch {env['torch']}, transformers "
             f"{env['transformers']}.",
             f"Task: {s['num_pairs']} key-value pairs in {s['seq_len']} tokens, vocabulary "
             f"{s['vocab_size']}, {parity._layout_text(s)}; {s['num_train']} train / {s['num_test']} unseen "
             "test sequences per seed.",
             f"Models: {s['num_layers']} layers, width {s['hidden_size']}, {s['num_heads']} heads of "
             f"{s['head_dim']}, SSM heads of {s['ssm_head_dim']} (expand {s['ssm_expand']}); each row sized "
             "to its group's budget by `mqar.budget_overrides`.",
             f"Training: AdamW, {parity._schedule_text(s)}, weight decay {s['weight_decay']:g}, batch "
             f"{s['batch_size']}, {s['steps']} steps{parity._compile_text(s)}. "
             f"Learning rates swept at seed {meta['seeds'][0]}: "
             f"{', '.join(format(lr, 'g') for lr in lrs)}; seeds {meta['seeds']} at the best.",
             f"Plateau (answers one of the listed values without the association): "
             f"{meta['plateau_accuracy']:.3f}.", "",
             "| group | state floats/layer | params | best lr | mean | min | max | per seed | final loss "
             "| errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lr = _fmt(r["best_lr"], "g") + (f" (of {r['follows']})" if r["follows"] else "")
        per_seed = " / ".join(f"{seed}: {_fmt(acc)}" for seed, acc in r["per_seed"].items()) or "-"
        lines.append(f"| {r['group']} | {_fmt(r['state_floats'], '.0f')} | {r['params'] or '-'} | {lr} | "
                     f"{_fmt(r['mean'])} | {_fmt(r['min'])} | {_fmt(r['max'])} | {per_seed} | "
                     f"{_fmt(r['final_loss_mean'])} | {'; '.join(r['errors'])} |")
    head = " | ".join(f"lr {lr:g}" for lr in lrs)
    lines += ["", f"Learning-rate sweep at seed {meta['seeds'][0]}: accuracy (final loss).", "",
              f"| group | {head} |", "|---|" + "---|" * len(lrs)]
    for r in summary:
        if r["sweep"] is None:
            continue
        cells = [("-" if c is None else f"{_fmt(c['accuracy'])} ({_fmt(c['final_loss'], '.2f')})")
                 for c in r["sweep"].values()]
        lines.append(f"| {r['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(summary, path, title=""):
    """Mean accuracy (bars: min to max over the seeds) against state floats per layer, one line per row.
    Returns the path, or None without matplotlib or without any finished group."""
    points = [r for r in summary if r["mean"] is not None and r["state_floats"]]
    plt = _pyplot()
    if plt is None or not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in dict.fromkeys(r["row"] for r in points):
        mine = sorted((r for r in points if r["row"] == row), key=lambda r: r["state_floats"])
        x = [r["state_floats"] for r in mine]
        y = [r["mean"] for r in mine]
        err = [[r["mean"] - r["min"] for r in mine], [r["max"] - r["mean"] for r in mine]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=row)
    ax.set(xscale="log", xlabel="decoding state (floats per layer)", ylabel="MQAR accuracy (mean, min-max)",
           ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curve_panels(protocol):
    """[(title, [(seed, loss curve)])]: per group with a known best learning rate, the recorded training-loss
    curves (`parity.loss_curve`'s window means) of its seeds at that learning rate."""
    panels = []
    for group in protocol.groups.values():
        best = protocol.best_lr(group)
        runs = [protocol.done.get((group.name, best, s)) for s in protocol.seeds] if best else []
        curves = [(r["seed"], r["loss_curve"]) for r in runs if r and r.get("loss_curve")]
        if curves:
            panels.append((f"{group.name}, lr {best:g}", curves))
    return panels


def plot_loss_curves(protocol, path, steps, title=""):
    """One panel per group (`loss_curve_panels`), loss against step: it shows which rows left the plateau,
    when, and whether a flat row was still falling at the end. Returns the path, or None (no matplotlib, no
    curve)."""
    panels = loss_curve_panels(protocol)
    plt = _pyplot()
    if plt is None or not panels:
        return None
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels):
        for seed, curve in curves:
            window = max(1, steps // len(curve))  # each point: the mean of one window (parity.loss_curve)
            ax.plot([window * (i + 0.5) for i in range(len(curve))], curve, label=f"seed {seed}")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("step", fontsize=8)
    fig.supylabel("training loss (window mean)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(out_dir, protocol, meta):
    summary = protocol.summary()
    jobs = [protocol.done[k] for k in sorted(protocol.done, key=lambda k: (k[0], k[1], k[2]))]
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta, summary=summary, jobs=jobs), f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(summary, meta))
    s = meta["setting"]
    title = f"MQAR, {s['num_pairs']} pairs in {s['seq_len']} tokens"
    plot(summary, os.path.join(out_dir, "zoology.png"), title)
    plot_loss_curves(protocol, os.path.join(out_dir, "loss_curves.png"), s["steps"], title)
    return summary


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _names(text):
    return tuple(x for x in text.split(",") if x)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m bmojo.eval.zoology",
        description="MQAR accuracy against decoding-state size by Zoology's protocol (learning-rate "
                    "sweep, then seeds at the best), rows x state budgets; writes results.json, results.md, "
                    "zoology.png, loss_curves.png.")
    p.add_argument("--rows", type=_names,
                   default=("bmojo", "bmojo-f", "mamba2", "sliding_attention", "hybrid"),
                   help="rows sized to every budget (parity.BUDGET_SPLIT; comma-separated)")
    p.add_argument("--budgets", type=parity._ints, default=(2048, 4096),
                   help="decoding-state floats per layer (comma-separated)")
    p.add_argument("--unbudgeted-rows", type=_names, default=("full_attention", "hf-llama"),
                   help="rows run once at the setting's sizes (full attention keeps the whole sequence)")
    p.add_argument("--ablation", type=_names, default=(),
                   help=f"rows {parity.ABLATION_PREFIX}<M> at every budget (or "
                        f"{parity.ABLATION_PREFIX}<M>@<budget> at one), at the best lr of the bmojo row")
    p.add_argument("--seeds", type=parity._ints, default=sweep.DEFAULT_SEEDS)
    parity.add_setting_arguments(p, parity.ParitySetting())
    p.add_argument("--device", default="cpu", help="torch device (cuda: bf16 autocast; cpu: float32)")
    p.add_argument("--workers", type=int, default=1, help="jobs at once, one process of one thread each")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds after which no job starts (running ones finish; continue with --resume)")
    p.add_argument("--resume", default=None, metavar="RESULTS_JSON")
    p.add_argument("--out", default="zoology_results")
    p.add_argument("--replot", metavar="RESULTS_JSON",
                   help="alone: rewrite results.md, zoology.png and loss_curves.png of a run")
    return p


def replot(path):
    """Rewrites results.md and zoology.png beside an earlier results.json (e.g. one written where matplotlib
    was not installed) from its jobs; returns the summary."""
    with open(path) as f:
        earlier = json.load(f)
    groups = [Group(**g) for g in earlier["groups"]]
    protocol = Protocol(groups, earlier["lrs"], earlier["seeds"])
    protocol.done = {(j["group"], j["lr"], j["seed"]): j for j in earlier["jobs"]}
    meta = {k: v for k, v in earlier.items() if k not in ("summary", "jobs")}
    return write_results(os.path.dirname(os.path.abspath(path)), protocol, meta)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--replot"] and len(argv) == 2:
        replot(argv[1])
        return 0
    ns = build_parser().parse_args(argv)
    try:
        lrs = sweep._check_learning_rates(ns.lrs if ns.lrs is not None else sweep.DEFAULT_LEARNING_RATES[:4])
        setting = parity.setting_from_args(ns, lrs[0])
        groups = plan_groups(ns.rows, ns.budgets, ns.unbudgeted_rows, ns.ablation)
        summary = run_zoology(groups, lrs, ns.seeds, setting, ns.device, ns.workers, ns.out,
                              "python -m bmojo.eval.zoology " + shlex.join(argv), ns.time_limit, ns.resume)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if all(r["seeds_done"] == len(ns.seeds) for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
