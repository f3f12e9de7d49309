"""Runs each model of a benchmark in a process of its own: one model's torch.compile caches, CUDA graphs
and allocator state must never speed up or slow down the next one's numbers."""

import json
import os
import subprocess
import sys


def row_in_child(script, name, out, extra_args):
    """Runs `script --models NAME --out ROW_FILE *extra_args` and returns the JSON row it wrote,
    or {"error": ...} when the child failed."""
    row_file = f"{out}.{name}.row"
    done = subprocess.run([sys.executable, script, "--models", name, "--out", row_file, *extra_args])
    if done.returncode != 0:
        return {"error": f"exit code {done.returncode}"}
    with open(row_file) as f:
        row = json.load(f)
    os.remove(row_file)
    return row


def save(results, out):
    with open(out, "w") as f:  # after every model: partial results survive a time-out
        json.dump(results, f, indent=2)
