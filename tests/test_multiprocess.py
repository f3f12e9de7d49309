"""HF `Trainer` in 2 processes through `accelerate launch` (DDP, and FSDP2 with full sharding) on CPU/gloo
gives the single-process run on the same global batches, and an FSDP-sharded checkpoint merges and reloads
with `from_pretrained`.

Each run is tests/multiprocess_worker.py in fresh processes; these tests compare what rank 0 wrote. Plain
SGD at a constant learning rate, so equal parameters after the steps mean equal gradients at every step.
The data holds a different number of label tokens in each process's share (97 and 74 at the first step),
the case the `num_items_in_batch` weighting of the LM and innovation losses must get exactly right.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import merge_fsdp_weights

import bmojo

WORKER = Path(__file__).with_name("multiprocess_worker.py")
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
TIMEOUT_S = 300
STEPS, GLOBAL_BATCH, GRAD_ACCUM = 2, 8, 2
FSDP_FLAGS = [
    "--use_fsdp", "--fsdp_version", "2",
    "--fsdp_reshard_after_forward", "true",  # FSDP2's full sharding (FSDP1's FULL_SHARD)
    "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap", "BMojoDecoderLayer",
    "--fsdp_state_dict_type", "SHARDED_STATE_DICT",  # checkpoints: one shard per rank, no gather
]

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home):
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",  # CPU + gloo even where GPUs exist: the test is about the engine, not speed
        HF_HOME=str(home),  # no user default_config.yaml from ~/.cache/huggingface/accelerate leaks in
        PYTHONPATH=os.pathsep.join(p for p in (str(Path(bmojo.__file__).parent.parent),
                                               os.environ.get("PYTHONPATH")) if p),
    )
    return env


def run(cmd, home):
    """Run a launcher in its own process group; on failure or timeout, fail with the children's output."""
    proc = subprocess.Popen(cmd, env=child_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it started, nothing else
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT_S}s: {' '.join(cmd)}\n--- output (tail) ---\n{output[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(cmd)}\n--- output (tail) ---\n{output[-6000:]}")
    return output


def worker_args(out, *extra):
    return [str(WORKER), "--out", str(out), "--steps", str(STEPS), "--global-batch", str(GLOBAL_BATCH),
            "--grad-accum", str(GRAD_ACCUM), *extra]


def launch(out, *flags, worker_extra=()):
    # `--multi_gpu` is accelerate's torchrun-style launcher (one process per rank); with `--cpu` accelerate
    # would run a single process unless MPI is set up. The worker's TrainingArguments(use_cpu=True) then
    # makes each rank a CPU rank on a gloo process group.
    cmd = [*ACCELERATE, "launch", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
           str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", *flags,
           *worker_args(out, *worker_extra)]
    run(cmd, out.parent)
    return load(out)


def load(out):
    result = json.loads((out / "result.json").read_text())
    result["params"] = torch.load(out / "params.pt")
    result["probe"] = torch.load(out / "probe.pt")
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    run([sys.executable, *worker_args(root / "single")], root)
    return {
        "single": load(root / "single"),
        "ddp": launch(root / "ddp", "--multi_gpu"),
        "fsdp": launch(root / "fsdp", *FSDP_FLAGS, worker_extra=["--save-checkpoint"]),
        "root": root,
    }


def assert_same_training(run, reference):
    assert run["world_size"] == 2
    assert len(reference["losses"]) == STEPS and reference["losses"][0] != reference["losses"][1]
    # Trainer's logged loss is the mean over processes of each one's share: the global-batch loss.
    torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(reference["losses"]),
                               rtol=1e-6, atol=1e-5)
    assert run["params"].keys() == reference["params"].keys()
    for name, expected in reference["params"].items():
        torch.testing.assert_close(run["params"][name], expected, rtol=1e-5, atol=2e-6, msg=name)


def test_single_process_run_trains(runs):
    """The reference is not vacuous: the steps moved every parameter away from its initial value."""
    torch.manual_seed(0)
    initial = bmojo.BMojoForCausalLM(bmojo.preset_config("tiny", initializer_range=0.2)).state_dict()
    trained = runs["single"]["params"]
    assert runs["single"]["world_size"] == 1
    moved = [name for name in trained if not torch.equal(trained[name], initial[name])]
    assert moved == list(trained)


def test_ddp_two_processes_equal_one(runs):
    assert runs["ddp"]["distributed_type"] == "MULTI_CPU"
    assert_same_training(runs["ddp"], runs["single"])


def test_fsdp_full_shard_two_processes_equal_one(runs):
    fsdp = runs["fsdp"]
    assert fsdp["distributed_type"] == "FSDP"
    assert fsdp["sharded_parameters"] > 0  # each rank held only part of those parameters
    assert_same_training(fsdp, runs["single"])


def test_fsdp_sharded_checkpoint_reloads_with_from_pretrained(runs):
    checkpoint = runs["root"] / "fsdp" / f"checkpoint-{STEPS}"
    shards = checkpoint / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    merged = runs["root"] / "merged"
    # What `accelerate merge-weights SHARDS OUT` runs, called here to spare the CI a fourth interpreter start.
    merge_fsdp_weights(str(shards), str(merged))
    shutil.copy(runs["root"] / "fsdp" / "config.json", merged / "config.json")
    model = bmojo.BMojoForCausalLM.from_pretrained(merged).eval()
    probe = runs["fsdp"]["probe"]
    with torch.no_grad():
        logits = model(probe["input_ids"]).logits
    # The logits the sharded model computed before saving, on every rank.
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)
    for name, expected in runs["fsdp"]["params"].items():
        torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=0, msg=name)
