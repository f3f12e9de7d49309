#!/usr/bin/env bash
# transformers' own common model tests (ModelTesterMixin) against BMojoModel / BMojoForCausalLM, run the way a
# contributor to transformers runs them, without copying transformers' test code into this repository:
#   1. find the transformers version installed for PYTHON (first argument, default .venv-ci/bin/python, else python3);
#   2. download that version's source distribution from PyPI into a cache folder ($BMOJO_HF_CACHE, default
#      ~/.cache/bmojo/transformers-sdist) and unpack it there, once per version;
#   3. run tests/hf_common with BMOJO_TRANSFORMERS_SRC pointing at the unpacked tree (its tests/ folder holds
#      test_modeling_common.py).
# Extra arguments after PYTHON go to pytest (e.g. -k save_load).
set -euo pipefail
cd "$(dirname "$0")/.."

py=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$py" ]; then
  if [ -x .venv-ci/bin/python ]; then py=.venv-ci/bin/python; else py=python3; fi
fi
pip=("$py" -m pip --disable-pip-version-check)

version=$("$py" -c 'import transformers; print(transformers.__version__)')
cache=${BMOJO_HF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bmojo/transformers-sdist}
src="$cache/transformers-$version"
if [ ! -f "$src/tests/test_modeling_common.py" ]; then
  mkdir -p "$cache"
  tarball="$cache/transformers-$version.tar.gz"
  if [ ! -f "$tarball" ]; then
    "${pip[@]}" download -q --no-binary :all: --no-deps -d "$cache" "transformers==$version"
  fi
  rm -rf "$src"
  tar -xzf "$tarball" -C "$cache"
  if [ ! -f "$src/tests/test_modeling_common.py" ]; then
    echo "hf-common: the transformers $version sdist has no tests/test_modeling_common.py" >&2
    exit 1
  fi
fi

# The suite's own test dependency (setup.cfg's hf-common extra).
"${pip[@]}" install -q "parameterized>=0.9"

echo "hf-common: transformers $version's ModelTesterMixin from $src"
BMOJO_TRANSFORMERS_SRC="$src" "$py" -m pytest -q -rsx -p no:warnings tests/hf_common "$@"
