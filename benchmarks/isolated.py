"""Runs each model of a benchmark in a process of its own: one model's torch.compile caches, CUDA graphs
and allocator state must never speed up or slow down the next one's numbers."""

import json
import os
import signal
import subprocess
import sys


def row_in_child(script, name, out, extra_args, timeout=None):
    """Runs `script --models NAME --out ROW_FILE *extra_args` and returns the JSON row it wrote,
    or {"error": ...} when the child failed.

    With `timeout` (seconds) the child, and every process it started (Inductor's compile workers), is
    killed when it runs longer; a child that rewrites ROW_FILE after each measurement then still gives
    back the measurements it finished, with "error" saying why the rest are missing."""
    row_file = f"{out}.{name}.row"
    if os.path.exists(row_file):
        os.remove(row_file)
    # a session of its own: on time-out the whole process group goes, not the child alone
    child = subprocess.Popen([sys.executable, script, "--models", name, "--out", row_file, *extra_args],
                             start_new_session=True)
    try:
        error = None if child.wait(timeout=timeout) == 0 else f"exit code {child.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        error = f"killed after the row time-out of {timeout:.0f} s"
    row = {}
    if os.path.exists(row_file):
        try:
            with open(row_file) as f:
                row = json.load(f)
        except ValueError as err:  # cut off mid-write: report it, keep the run going
            error = f"{error}; row file unreadable: {err}"
        os.remove(row_file)
    if error is not None:
        row["error"] = error
    return row


def save(results, out):
    with open(out, "w") as f:  # after every model: partial results survive a time-out
        json.dump(results, f, indent=2)
