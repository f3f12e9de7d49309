# Source on the device machine: makes `import bmojo` resolve to this checkout without pip.
# The repository root is the package directory (setup.cfg: package_dir bmojo = .), so one symlink named
# `bmojo` pointing at the root is the whole package.
shim=/tmp/bmojo_shim
rm -rf "$shim" && mkdir -p "$shim"
ln -s "$(pwd)" "$shim/bmojo"
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
