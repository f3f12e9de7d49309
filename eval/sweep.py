"""Learning-rate sweep, then seeds: the tuning protocol of Zoology (Arora et al. 2023, arXiv 2312.04927).

A model's MQAR accuracy depends strongly on its learning rate, and differently for each family, so
one shared learning rate measures the schedule as much as the architecture. Zoology therefore
sweeps the learning rate for every model and reports the best; we then repeat the best setting
over several seeds and report the mean and the range, so that one lucky seed cannot decide a row.

The protocol is written against an `objective(lr, seed) -> dict` with at least `accuracy` (and,
optionally, `final_loss`): `mqar_objective` builds the MQAR one, and tests pass a cheap stand-in.

    result = zoology_protocol(mqar_objective(task, config, train_args), (1e-4, 3e-4, 1e-3, 3e-3))
    result.best_lr, result.mean, result.low, result.high
"""

import math
from dataclasses import dataclass, field, replace

MIN_LEARNING_RATES = 4  # Zoology sweeps at least this many values per model
DEFAULT_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class ProtocolResult:
    """What `zoology_protocol` measured.

    `sweep` is one row per learning rate (at `sweep_seed`), `runs` one row per seed at `best_lr`;
    each row is the objective's dict plus `lr` and `seed`. `mean`, `low`, `high` summarise the
    accuracy of `runs`."""

    sweep: list
    best_lr: float
    runs: list = field(default_factory=list)

    @property
    def accuracies(self):
        return [r["accuracy"] for r in self.runs]

    @property
    def mean(self):
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def low(self):
        return min(self.accuracies)

    @property
    def high(self):
        return max(self.accuracies)

    def summary(self):
        """One JSON-ready dict: the sweep, the best learning rate, the seed runs, mean and range."""
        return dict(sweep=self.sweep, best_lr=self.best_lr, runs=self.runs, mean=self.mean,
                    low=self.low, high=self.high)


def _check_learning_rates(learning_rates):
    lrs = tuple(learning_rates)
    if len(lrs) < MIN_LEARNING_RATES or len(set(lrs)) != len(lrs):
        raise ValueError(f"learning_rates must hold at least {MIN_LEARNING_RATES} distinct values "
                         f"(Zoology's protocol), got {lrs!r}")
    bad = [lr for lr in lrs if isinstance(lr, bool) or not isinstance(lr, (int, float))
           or not math.isfinite(lr) or lr <= 0]
    if bad:
        raise ValueError(f"learning_rates must be finite numbers > 0, got {bad!r}")
    return lrs


def _check_seeds(seeds):
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must hold at least one seed and no repeats, got {seeds!r}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"seeds must be integers >= 0, got {bad!r}")
    return seeds


def _score(row):
    """Sort key of a sweep row: higher accuracy first, then lower final loss (NaN loss counts as worst).

    The loss breaks ties that are common on MQAR: several learning rates reach 1.000, or all sit at
    chance, and the lower loss is the run further from failing."""
    loss = row.get("final_loss", math.inf)
    loss = math.inf if loss is None or (isinstance(loss, float) and math.isnan(loss)) else loss
    accuracy = row["accuracy"]
    accuracy = -math.inf if isinstance(accuracy, float) and math.isnan(accuracy) else accuracy
    return (-accuracy, loss)


def best_learning_rate(rows):
    """The `lr` of the best row by `_score`; on an exact tie, the first row given (the sweep order)."""
    if not rows:
        raise ValueError("rows must hold at least one sweep result")
    return min(rows, key=_score)["lr"]  # min() keeps the first of equal keys


def lr_sweep(objective, learning_rates=DEFAULT_LEARNING_RATES, seed=0, log=None):
    """Runs `objective(lr, seed)` for every learning rate; returns (rows, best learning rate)."""
    rows = []
    for lr in _check_learning_rates(learning_rates):
        rows.append({**objective(lr, seed), "lr": lr, "seed": seed})
        if log:
            log(f"  lr {lr:g}: accuracy {rows[-1]['accuracy']:.3f}")
    return rows, best_learning_rate(rows)


def zoology_protocol(objective, learning_rates=DEFAULT_LEARNING_RATES, seeds=DEFAULT_SEEDS, sweep_seed=None,
                     log=None):
    """Sweep the learning rate at `sweep_seed` (default: the first seed), then run every seed at the best.

    The sweep's own run at the best learning rate is reused for its seed rather than trained again
    (the objective is deterministic given (lr, seed)), so the protocol costs len(lrs) + len(seeds) - 1
    runs when `sweep_seed` is one of `seeds`."""
    seeds = _check_seeds(seeds)
    sweep_seed = seeds[0] if sweep_seed is None else sweep_seed
    rows, best = lr_sweep(objective, learning_rates, sweep_seed, log)
    done = {sweep_seed: next(r for r in rows if r["lr"] == best)}
    runs = []
    for seed in seeds:
        row = done.get(seed)
        if row is None:
            row = {**objective(best, seed), "lr": best, "seed": seed}
            if log:
                log(f"  seed {seed} at lr {best:g}: accuracy {row['accuracy']:.3f}")
        runs.append(row)
    return ProtocolResult(sweep=rows, best_lr=best, runs=runs)


def mqar_objective(task, config, train_args, device="cpu"):
    """objective(lr, seed) for the protocol: trains a fresh `BMojoForCausalLM(config)` on `task`.

    The seed sets the model's initialisation, the batch order and the data (train and test splits
    are regenerated from `task` with that seed), so each seed is an independent repetition. Returns
    accuracy on the unseen test split, the final loss (mean of the last 20 steps) and the seconds."""
    import time

    import torch

    import bmojo

    from . import mqar

    def objective(lr, seed):
        train, test = mqar.make_splits(replace(task, seed=seed))
        torch.manual_seed(seed)
        model = bmojo.BMojoForCausalLM(config).to(device)
        start = time.time()
        args = replace(train_args, lr=lr, seed=seed)
        losses = mqar.train(model, train, args, desc=f"lr {lr:g} seed {seed}")
        tail = losses[-20:]
        return dict(accuracy=mqar.evaluate(model, test), final_loss=sum(tail) / len(tail),
                    train_seconds=round(time.time() - start, 1))

    return objective


def protocol_table(configs, task, train_args, learning_rates=DEFAULT_LEARNING_RATES, seeds=DEFAULT_SEEDS,
                   device="cpu", log=None):
    """Zoology's protocol for every model in `configs` ({label: BMojoConfig}) on one MQAR task.

    Returns one row per model: label, decoding state (floats per layer), the best learning rate,
    mean / low / high accuracy over the seeds, and the full sweep and seed runs."""
    from . import mqar

    rows = []
    for label, config in configs.items():
        if log:
            log(f"{label}: sweeping learning rates {tuple(learning_rates)}")
        result = zoology_protocol(mqar_objective(task, config, train_args, device), learning_rates, seeds,
                                  log=log)
        rows.append(dict(label=label, state_floats=mqar.state_floats(config, task.seq_len),
                         num_pairs=task.num_pairs, seq_len=task.seq_len, chance=task.chance,
                         **result.summary()))
    return rows


def markdown_protocol_table(rows):
    """One line per model: best learning rate, then mean accuracy and its range over the seeds."""
    head = ("| model | pairs | seq len | state floats/layer | best lr | accuracy mean | min-max | seeds |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['label']} | {r['num_pairs']} | {r['seq_len']} | {r['state_floats']:.0f} | "
             f"{r['best_lr']:g} | {r['mean']:.3f} | {r['low']:.3f}-{r['high']:.3f} | {len(r['runs'])} |"
             for r in rows]
    return head + "\n".join(lines) + "\n"
