"""The eidetic-capacity ablation on the quickstart demo's recall task: recall accuracy against the size of
B'MOJO's eidetic store, with seeds (issue 13; the paper's ablation rises to saturation).

The demo's task is one where the store is the only way to the pairs: they lie 41+ tokens before the
queries, B'MOJO's window is 4 tokens and it has no fading band (`bmojo.cli`, DEMO_* settings). Everything but
`eidetic_capacity` (M_e, in tokens) stays at the demo's values, so capacity 0 is B'MOJO with its SSM and
window alone. Each (capacity, lr, seed) job is one process with one thread, so it runs on CPU cores.

    python -m bmojo.eval.eidetic_ablation --capacities 0,3,6,9,12,18,24 --seeds 0,1,2 --workers 2 \\
        --out eval/results/eidetic_ablation_cpu

Writes results.json (every job, with its loss curve), results.md and ablation.png, rewritten after every
finished job."""

import argparse
import datetime
import functools
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch

from . import mqar, parity


@dataclass(frozen=True)
class AblationSetting:
    """The demo's training recipe (`bmojo.cli` DEMO_STEPS, DEMO_BATCH, DEMO_LR); `lr` is set per job."""

    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3


def demo_task(seed):
    from .. import cli

    return mqar.MQARTask(seed=seed, **cli.DEMO_TASK)


def demo_config(capacity, vocab_size):
    """The demo's B'MOJO with an eidetic store of `capacity` tokens."""
    from .. import cli

    return cli.demo_configs(vocab_size, eidetic_capacity=capacity)[0]


def check_capacities(capacities):
    capacities = tuple(capacities)
    if not capacities or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in capacities):
        raise ValueError(f"capacities must be integers >= 0 (at least one), got {capacities!r}")
    return capacities


def run_job(capacity, seed, setting, device="cpu"):
    """Trains and evaluates the demo's B'MOJO at one store capacity, lr and seed; never raises."""
    from .. import BMojoForCausalLM

    result = dict(capacity=capacity, lr=setting.lr, seed=seed, error=None)
    start = time.time()
    try:
        task = demo_task(seed)
        config = demo_config(capacity, task.vocab_size)
        train, test = mqar.make_splits(task)
        torch.manual_seed(seed)
        model = BMojoForCausalLM(config).to(device)
        args = mqar.TrainArgs(steps=setting.steps, batch_size=setting.batch_size, lr=setting.lr, seed=seed,
                              progress=False)
        losses = mqar.train(model, train, args)
        result.update(accuracy=mqar.evaluate(model, test), chance=task.chance,
                      state_floats=mqar.state_floats(config, task.seq_len),
                      final_loss=sum(losses[-20:]) / len(losses[-20:]),
                      loss_curve=[round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 4)
                                  for i in range(0, len(losses), 50)])
    except Exception as err:  # one failing job must not end the run: its row says why
        result["error"] = f"{type(err).__name__}: {err}"
    result["seconds"] = round(time.time() - start, 1)
    return result


def summarize(jobs):
    """One row per (capacity, lr): accuracy mean and range over its seeds, sorted by capacity then lr."""
    groups = {}
    for job in jobs:
        if not job.get("error"):
            groups.setdefault((job["capacity"], job["lr"]), []).append(job)
    rows = []
    for (capacity, lr), group in sorted(groups.items()):
        group = sorted(group, key=lambda j: j["seed"])
        acc = [j["accuracy"] for j in group]
        rows.append(dict(capacity=capacity, lr=lr, seeds=[j["seed"] for j in group], accuracy=acc,
                         mean=sum(acc) / len(acc), low=min(acc), high=max(acc),
                         state_floats=group[0]["state_floats"], chance=group[0]["chance"]))
    return rows


def markdown(summary, meta):
    lines = [f"# Eidetic-capacity ablation: {meta['date']}", "", f"Command: `{meta['command']}`", "",
             f"Device: {meta['environment']['device']}; torch {meta['environment']['torch']}.", "",
             "| M_e (tokens) | lr | state floats / layer | seeds | accuracy, mean | range | per seed |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['capacity']} | {r['lr']:g} | {r['state_floats']:.0f} | {len(r['seeds'])} | "
                     f"{r['mean']:.3f} | {r['low']:.3f}-{r['high']:.3f} | "
                     f"{' / '.join(f'{a:.3f}' for a in r['accuracy'])} |")
    if summary:
        lines += ["", f"Chance: {summary[0]['chance']:.3f}."]
    return "\n".join(lines) + "\n"


def plot(summary, out_dir, lr):
    """Accuracy against capacity at `lr` (mean, and each seed as a dot); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in summary if r["lr"] == lr]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    caps = [r["capacity"] for r in rows]
    ax.plot(caps, [r["mean"] for r in rows], marker="o", label=f"mean of seeds (lr {lr:g})")
    for r in rows:
        ax.scatter([r["capacity"]] * len(r["accuracy"]), r["accuracy"], color="grey", s=12, zorder=3)
    ax.axhline(rows[0]["chance"], color="black", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("eidetic store M_e (tokens per layer)")
    ax.set_ylabel("recall accuracy (500 unseen sequences)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = os.path.join(out_dir, "ablation.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(out_dir, jobs, meta):
    summary = summarize(jobs)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta, summary=summary, jobs=jobs), f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(summary, meta))
    plot(summary, out_dir, meta["plot_lr"])
    return summary


def run_ablation(capacities, lrs, seeds, setting=AblationSetting(), workers=1, out_dir="eidetic_ablation",
                 command=None, log=None):
    """Every (capacity, lr, seed) job; results rewritten after each. Returns the summary."""
    capacities, lrs, seeds = check_capacities(capacities), parity.check_lrs(lrs), parity.check_seeds(seeds)
    log = log or functools.partial(print, flush=True)
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(command=command or "run_ablation(...)",
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                environment=parity._environment("cpu"), setting=asdict(setting), capacities=list(capacities),
                lrs=list(lrs), seeds=list(seeds), plot_lr=setting.lr if setting.lr in lrs else lrs[0])
    todo = [(c, lr, s) for s in seeds for lr in lrs for c in capacities]
    log(f"{len(todo)} job(s): {setting.steps} steps of batch {setting.batch_size} each, {workers} at once")
    jobs, start = [], time.time()

    def record(job):
        jobs.append(job)
        elapsed = time.time() - start
        eta = elapsed / len(jobs) * (len(todo) - len(jobs))
        what = job["error"] or f"accuracy {job['accuracy']:.3f}"
        log(f"[{len(jobs)}/{len(todo)}] M_e {job['capacity']} lr {job['lr']:g} seed {job['seed']}: {what} "
            f"({job['seconds']:.0f} s) | elapsed {elapsed:.0f} s, ETA {eta:.0f} s")
        write_results(out_dir, jobs, meta)

    def skipped(capacity, lr, seed, why):
        return dict(capacity=capacity, lr=lr, seed=seed, error=why, seconds=0.0)

    parity.run_jobs(todo, ["cpu"] * len(todo), setting, workers, None, start, record, skipped, job=run_job)
    return write_results(out_dir, jobs, meta)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bmojo.eval.eidetic_ablation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--capacities", default="0,3,6,9,12,18,24", help="eidetic store sizes M_e, in tokens")
    p.add_argument("--lrs", default=str(AblationSetting.lr), help="peak learning rates (the demo's: 3e-3)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=AblationSetting.steps)
    p.add_argument("--workers", type=int, default=1, help="jobs at once, each its own one-thread process")
    p.add_argument("--out", default="eidetic_ablation")
    ns = p.parse_args(argv)
    try:
        args = sys.argv[1:] if argv is None else argv
        command = "python -m bmojo.eval.eidetic_ablation " + shlex.join(args)
        if ns.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {ns.steps}")
        lrs = parity._floats(ns.lrs)
        setting = replace(AblationSetting(), steps=ns.steps, lr=lrs[0] if lrs else AblationSetting.lr)
        run_ablation(parity._ints(ns.capacities), lrs, parity._ints(ns.seeds), setting, ns.workers, ns.out,
                     command)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
