"""demo_levers.py (eval/results/demo_levers_cpu/README.md) adapted: one B'MOJO run of the quickstart demo
with JSON overrides. Usage: OMP_NUM_THREADS=1 python demo_levers_s12.py SEED '{"task": {...}, "bmojo": {...},
"model": {...}, "train": {...}, "train_baseline": false}' [LABEL]
task: MQARTask fields over cli.DEMO_TASK; bmojo: over cli.DEMO_BMOJO; model: over cli.DEMO_MODEL (applied to
B'MOJO and to the matched baseline); train: TrainArgs fields over steps=DEMO_STEPS, batch=DEMO_BATCH,
lr=DEMO_LR. Appends one JSON line to runs.jsonl beside this script."""
import json, os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
import bmojo
from bmojo import cli
from bmojo.eval import mqar

mqar.PAIRS_RANGE = (1, 256)  # lets MQARTask take fewer than 4 pairs
seed = int(sys.argv[1])
changes = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
label = sys.argv[3] if len(sys.argv) > 3 else ""
task_kw = {**cli.DEMO_TASK, **changes.get("task", {})}
model_kw = {**cli.DEMO_MODEL, **changes.get("model", {})}
bmojo_kw = {**cli.DEMO_BMOJO, **changes.get("bmojo", {})}
train_kw = dict(steps=cli.DEMO_STEPS, batch_size=cli.DEMO_BATCH, lr=cli.DEMO_LR)
train_kw.update(changes.get("train", {}))

task = mqar.MQARTask(seed=seed, **task_kw)
cfg = bmojo.preset_config("tiny", **model_kw, **bmojo_kw, vocab_size=task.vocab_size)
floats = mqar.state_floats(cfg, task.seq_len)

# the sliding-window baseline of the same decoding state, and whether it is blind to the pairs
base_kw = {**model_kw, "window_size": cli.DEMO_BASELINE["window_size"]}
probe = bmojo.preset_config("swa-transformer-tiny", **base_kw, vocab_size=task.vocab_size)
per_token = 2 * probe.num_key_value_heads * probe.head_dim
w_base = floats / per_token
baseline = dict(window=w_base, floats=None, reach=None, distance=task.gap + 1, blind=None)
if w_base == int(w_base):
    bcfg = bmojo.preset_config("swa-transformer-tiny", **{**base_kw, "window_size": int(w_base)},
                               vocab_size=task.vocab_size)
    reach = cli.baseline_reach(bcfg)
    baseline.update(window=int(w_base), floats=mqar.state_floats(bcfg, task.seq_len), reach=reach,
                    blind=reach < task.gap + 1)
print(json.dumps(dict(label=label, seed=seed, changes=changes, state_floats=floats, baseline=baseline,
                      chance=round(task.chance, 4))), flush=True)

train, test = mqar.make_splits(task)
if changes.get("train_baseline"):  # train the matched sliding-window baseline instead of B'MOJO
    assert baseline["blind"] is not None, "no baseline window matches B'MOJO's state"
    cfg = bcfg
torch.manual_seed(seed)
model = bmojo.BMojoForCausalLM(cfg)
t = time.time()
args = mqar.TrainArgs(seed=seed, progress=False, **train_kw)
losses = mqar.train(model, train, args)
acc = mqar.evaluate(model, test)
secs = time.time() - t
curve = [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 3) for i in range(0, len(losses), 50)]
row = dict(label=label, seed=seed, model="baseline" if changes.get("train_baseline") else "bmojo", changes=changes, acc=round(acc, 3), loss=round(sum(losses[-20:]) / 20, 3),
           s=round(secs), state_floats=floats, baseline=baseline, chance=round(task.chance, 4),
           curve50=curve, load=os.getloadavg()[0], threads=torch.get_num_threads())
line = json.dumps(row)
print(line, flush=True)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.jsonl"), "a") as fh:
    fh.write(line + "\n")
