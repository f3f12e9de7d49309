"""CPU diagnosis of the parity plateau: one parity row trained with `mqar.train`'s recipe (same AdamW,
param groups, warmup + cosine, clipping, seeded batch order), with the training loss and the test
accuracy logged every `--every` steps, and an early stop once the loss is clearly off the plateau.

    OMP_NUM_THREADS=1 PYTHONPATH=... python eval/results/parity_gpu/diagnose.py --lr 1e-2 --steps 3000 \
        --stop-after 1500 --stop-below 0.3

`--steps` sets the schedule's length (the cosine decays over it), `--stop-after` the steps actually run,
so a 3000-step schedule can be watched over its first part. float32 (CPU); the GPU run used bf16.
"""

import argparse
import json
import time

import torch

from bmojo.eval import mqar, parity


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--row", default="hf-llama")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--stop-below", type=float, default=None, help="stop once the 50-step mean loss is below")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--embed-decay", type=float, default=None, help="weight decay of embeddings/head only")
    p.add_argument("--one-cycle", action="store_true", help="torch OneCycleLR (pct_start 0.3) instead")
    p.add_argument("--num-train", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--blank-answers", action="store_true",
                   help="replace each queried value in the input by the filler (Zoology's layout: the query "
                        "region holds the keys only), in train and test")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)

    setting = parity.replace(parity.ParitySetting(), num_train=a.num_train, batch_size=a.batch_size)
    task = mqar.MQARTask(vocab_size=setting.vocab_size, seq_len=setting.seq_len, num_pairs=setting.num_pairs,
                         num_train=setting.num_train, num_test=setting.num_test, seed=a.seed)
    train_data, test_data = mqar.make_splits(task)
    if a.blank_answers:
        for split in (train_data, test_data):  # labels[t] = v marks the answer's own input position t
            split["input_ids"] = split["input_ids"].masked_fill(split["labels"] != -100, mqar.FILLER)
    test_small = {k: v[:500] for k, v in test_data.items()}
    torch.manual_seed(a.seed)
    model, _ = parity.build_model(a.row, setting)
    args = mqar.TrainArgs(steps=a.steps, batch_size=setting.batch_size, lr=a.lr, warmup=a.warmup,
                          weight_decay=a.weight_decay, seed=a.seed, progress=False)
    torch.manual_seed(args.seed)
    embed = {id(p) for n, p in model.named_parameters() if "embed" in n or "lm_head" in n}
    groups = []
    for name_filter, wd in (
            (lambda p: p.dim() >= 2 and id(p) not in embed, args.weight_decay),
            (lambda p: p.dim() >= 2 and id(p) in embed,
             args.weight_decay if a.embed_decay is None else a.embed_decay),
            (lambda p: p.dim() < 2, 0.0)):
        params = [p for p in model.parameters() if name_filter(p)]
        if params:
            groups.append({"params": params, "weight_decay": wd})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
    if a.one_cycle:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: mqar._lr_factor(s, args))
    model.train()
    log, losses, start = [], [], time.time()
    stop = a.stop_after or a.steps
    for step, idx in enumerate(mqar._batches(train_data["input_ids"].shape[0], args), 1):
        out = model(input_ids=train_data["input_ids"][idx], labels=train_data["labels"][idx], use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if step % a.every == 0 or step == stop:
            mean = sum(losses[-50:]) / len(losses[-50:])
            acc = mqar.evaluate(model, test_small)
            model.train()
            entry = dict(step=step, loss50=round(mean, 4), test_acc500=round(acc, 4),
                         lr=opt.param_groups[0]["lr"], s=round(time.time() - start, 1))
            log.append(entry)
            print(json.dumps(entry), flush=True)
            if a.stop_below is not None and mean < a.stop_below:
                break
        if step >= stop:
            break
    model.eval()
    final = dict(vars(a), steps_run=step, ms_per_step=round(1000 * (time.time() - start) / step, 1),
                 test_acc1000=mqar.evaluate(model, test_data), plateau_acc=parity.plateau_accuracy(setting),
                 log=log)
    print(json.dumps({k: v for k, v in final.items() if k != "log"}), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(final, f, indent=1)


if __name__ == "__main__":
    main()
