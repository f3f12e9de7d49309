"""One HF `Trainer` run of a tiny B'MOJO model, for tests/test_multiprocess.py.

Run it directly (one process) or under `accelerate launch` (DDP or FSDP, set by the launcher's flags): the
same script, seed and data give the same global batches, so the single-process run is the reference that
the multi-process runs must reproduce. Rank 0 writes to `--out`:
  result.json   the loss Trainer logged at every step and the world size it ran under;
  params.pt     every parameter after training (gathered from the shards under FSDP);
  probe.pt      the probe batch and the logits of the trained model on it (computed by the wrapped, possibly
                sharded model on every rank, so it is the model "before saving").
With `--save-checkpoint` the Trainer also saves a checkpoint after the last step (under FSDP with
SHARDED_STATE_DICT, one shard per rank in checkpoint-N/pytorch_model_fsdp_0/).
"""

import argparse
import json
import os
import sys

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

import bmojo

VOCAB = 128


class MaskedRows(Dataset):
    """Random token rows whose labels hide a different-length prefix in each row, so that processes and
    micro-batches hold different numbers of label tokens: the case `num_items_in_batch` weighting is for."""

    def __init__(self, rows, length, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, VOCAB, (rows, length), generator=g)
        self.labels = self.ids.clone()
        for row in range(rows):
            self.labels[row, : (5 * row) % (length - 4)] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class StopOnNonFinite(TrainerCallback):
    """A NaN loss would make every later comparison meaningless: fail at the step it appears."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and not torch.isfinite(torch.tensor(logs["loss"])):
            raise RuntimeError(f"non-finite loss at step {state.global_step}: {logs}")


def allow_fsdp_on_cpu():
    """`accelerate launch --use_fsdp` on a machine without GPUs: let the Accelerator build its FSDP plugin.

    accelerate 1.15 turns ACCELERATE_USE_FSDP into DistributedType.FSDP only when the process group's type is
    a GPU-like one (MULTI_GPU, MULTI_XPU, ...: AcceleratorState.__init__); a CPU group (MULTI_CPU, gloo)
    keeps plain DDP without a word. FSDP2 itself runs on CPU over gloo (torch 2.13: `fully_shard` picks a CPU
    device mesh when CUDA is absent; gloo has the all-gather and reduce-scatter it needs), so relabel the
    already initialised CPU group before Trainer creates its Accelerator. The device stays the CPU.
    Test-only: on GPUs (without use_cpu) the launcher's flags alone select FSDP. The test checks that the run
    really was FSDP and that its parameters were sharded."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()  # initialised by TrainingArguments (CPU, gloo)
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for rank 0's results and the checkpoint")
    parser.add_argument("--global-batch", type=int, default=8, help="rows per optimizer step, all processes")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--save-checkpoint", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    per_device, rest = divmod(args.global_batch, world * args.grad_accum)
    if rest or per_device < 1:
        raise ValueError(f"--global-batch must be a multiple of processes x --grad-accum = "
                         f"{world * args.grad_accum}, got {args.global_batch}")

    torch.manual_seed(0)  # same initial weights on every rank and in the reference run
    config = bmojo.preset_config("tiny", initializer_range=0.2)
    model = bmojo.BMojoForCausalLM(config)
    data = MaskedRows(args.global_batch * args.steps, args.seq_len, seed=1)

    training = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        # Plain SGD: the update is lr x gradient, so equal parameters after a step mean equal gradients.
        optim="sgd", weight_decay=0.0, max_grad_norm=0.0,
        # Sequential order: step s uses rows [s * global_batch, (s + 1) * global_batch) in every run
        # (accelerate hands each process its share of those rows).
        train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
        logging_steps=1, report_to=[], disable_tqdm=True,
        save_strategy="steps" if args.save_checkpoint else "no", save_steps=args.steps,
        # The launchers below pass --cpu (ACCELERATE_USE_CPU=true), which TrainingArguments honours like
        # use_cpu=True; a direct single-process run needs it spelled out.
        use_cpu=True, ddp_backend="gloo" if world > 1 else None,
    )
    allow_fsdp_on_cpu()
    trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[StopOnNonFinite()])
    trainer.train()

    probe = data.ids[:2]
    trainer.model_wrapped.eval()
    with torch.no_grad():  # every rank runs the forward: FSDP all-gathers the shards layer by layer
        logits = trainer.model_wrapped(input_ids=probe).logits
    sharded = [name for name, p in trainer.model_wrapped.named_parameters()
               if hasattr(p, "to_local") and p.to_local().numel() < p.numel()]  # FSDP2 DTensor shards
    params = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # full tensors on rank 0

    if trainer.accelerator.is_main_process:
        os.makedirs(args.out, exist_ok=True)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump({"world_size": trainer.accelerator.num_processes, "losses": losses,
                       "distributed_type": trainer.accelerator.distributed_type.value,
                       "sharded_parameters": len(sharded),
                       "parameters": len(list(trainer.model_wrapped.parameters()))}, f)
        params = {name: t.detach().clone() for name, t in params.items()}
        torch.save(params, os.path.join(args.out, "params.pt"))
        torch.save({"input_ids": probe, "logits": logits}, os.path.join(args.out, "probe.pt"))
        model.config.save_pretrained(args.out)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(main())
