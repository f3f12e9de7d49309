"""The repository root is the package (setup.cfg: `bmojo = .`), so its `kernels/` folder sits on sys.path as a
top-level `kernels` whenever Python runs in the root (`python -m`, `python -c`). Hugging Face's `kernels`
distribution has the same name, and transformers 5.25+ imports it on `import transformers`: the folder must
stand aside for it (kernels/__init__.py), or nothing runs from the root."""

import importlib.metadata
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_root(code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_top_level_kernels_in_the_root_is_not_our_folder():
    kernels_file, ours, modeling = run_in_root(
        "import transformers.modeling_utils, kernels, bmojo.kernels, bmojo\n"
        "print(getattr(kernels, '__file__', None)); print(bmojo.kernels.__file__)\n"
        "print(bmojo.BMojoForCausalLM.__module__)")
    assert ours == os.path.join(ROOT, "kernels", "__init__.py")
    assert modeling == "bmojo.modeling_bmojo.modeling"
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:  # not installed: an empty module, read as absent
        assert kernels_file == "None"
    else:  # HF's distribution, wherever it is installed, never the repository's folder
        assert kernels_file != "None" and not kernels_file.startswith(os.path.join(ROOT, "kernels"))


def test_a_module_command_runs_in_the_root():
    lines = run_in_root("import runpy, sys\nsys.argv = ['mqar', '--help']\n"
                        "try:\n    runpy.run_module('bmojo.eval.mqar', run_name='__main__')\n"
                        "except SystemExit as e:\n    print('exit', e.code)")
    assert lines[-1] == "exit 0", lines[-5:]


def test_every_package_folder_is_installed():
    """setup.cfg lists the packages a wheel installs by name: a new sub-package left off the list imports from
    the checkout (editable installs) and is missing from a built wheel (CI's wheel check failed on
    `bmojo.kernels.conv`)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(config["options"]["packages"].split())
    found = {"bmojo"}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs
                   if not d.startswith((".", "_")) and d not in ("tests", "benchmarks", "build")]
        rel = os.path.relpath(folder, ROOT)
        if rel != "." and "__init__.py" in files:
            found.add("bmojo." + rel.replace(os.sep, "."))
    assert found - listed == set(), f"package folders missing from setup.cfg's packages: {found - listed}"
