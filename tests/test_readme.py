"""The README's Python snippets run as written.

Every ```python block of README.md runs on its own, in a fresh namespace, in an empty working directory.
A block whose first line starts with NEEDS_NETWORK (it uploads to or downloads from the Hub) is only
compiled; the rest of its first line says why. A block that needs an optional extra skips without it.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_NETWORK = "# needs the network"
# Optional extras a block may import, and the module whose absence skips it.
OPTIONAL_MODULES = {"bmojo.eval.lm_eval": "lm_eval"}


def python_blocks(text):
    """(first line number, source) of each ```python fenced block."""
    return [(text[:match.start()].count("\n") + 2, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_runnable_snippets():
    runnable = [source for _, source in BLOCKS if not source.startswith(NEEDS_NETWORK)]
    assert len(runnable) >= 3, "the README's offline snippets were not found"


@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_snippet_runs(line, source, tmp_path, monkeypatch):
    code = compile(source, f"README.md:{line}", "exec")  # network blocks must at least be valid Python
    if source.startswith(NEEDS_NETWORK):
        pytest.skip(source.splitlines()[0].lstrip("# "))
    for needs, module in OPTIONAL_MODULES.items():
        if needs in source:
            pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # snippets write folders such as my-bmojo/ into the working directory
    exec(code, {"__name__": "__main__"})
