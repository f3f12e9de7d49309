"""Does HF Llama leave the MQAR plateau on Zoology's data layout? (exploration for issue 12)"""
import argparse, json, math, time, sys
import torch
from bmojo.eval import mqar, parity

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--filler", default="random", choices=["random", "zero"])
p.add_argument("--gaps", default="power", choices=["power", "uniform"])
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--schedule", default="onecycle")
p.add_argument("--row", default="hf-llama")
p.add_argument("--out", required=True)
a = p.parse_args()
torch.set_num_threads(1)
V, T, N = 256, 64, 8

def make(n, seed):
    g = torch.Generator().manual_seed(seed)
    K = V // 2  # keys [1, K), values [K, V)
    keys = 1 + torch.rand(n, K - 1, generator=g).topk(N, dim=1).indices
    values = K + torch.rand(n, V - K, generator=g).topk(N, dim=1).indices
    space = (T - 2 * N) // 2  # query slots of 2 tokens
    if a.gaps == "power":
        w = 0.01 * torch.arange(1, space + 1, dtype=torch.float64) ** (0.01 - 1)
    else:
        w = torch.ones(space, dtype=torch.float64)
    slots = torch.multinomial((w / w.sum()).expand(n, -1), N, replacement=False, generator=g)  # (n, N)
    ids = torch.zeros(n, T, dtype=torch.long)
    ids[:, 0:2 * N:2], ids[:, 1:2 * N:2] = keys, values
    pos = 2 * N + 2 * slots
    ids.scatter_(1, pos, keys)  # every key queried once, in the slot order
    labels = torch.full_like(ids, -100)
    labels.scatter_(1, pos + 1, values)
    if a.filler == "random":
        rnd = torch.randint(V, ids.shape, generator=g)
        ids = torch.where(ids == 0, rnd, ids)
    return dict(input_ids=ids, labels=labels)

train, test = make(20000, 2 * a.seed), make(1000, 2 * a.seed + 1)
setting = parity.ParitySetting()
torch.manual_seed(a.seed)
model, _ = parity.build_model(a.row, setting)
t0 = time.time()
log = []
chunk = 500
args = mqar.TrainArgs(steps=a.steps, batch_size=64, lr=a.lr, weight_decay=0.1, warmup=50, seed=a.seed,
                      schedule=a.schedule, progress=False)
# one run of mqar.train over all steps (the schedule needs the total); evaluate at the end
losses = mqar.train(model, train, args)
acc = mqar.evaluate(model, test)
res = dict(vars(a), accuracy=acc, final_loss=sum(losses[-50:]) / 50,
           loss_curve=[round(sum(losses[i:i + 100]) / 100, 3) for i in range(0, len(losses), 100)],
           seconds=round(time.time() - t0))
print(json.dumps(res))
json.dump(res, open(a.out, "w"))
