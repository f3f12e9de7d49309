# Source on the device machine: makes `import bmojo` resolve to this checkout without pip
# (the package maps top-level folders onto bmojo.* sub-packages; a symlink tree does the same).
shim=/tmp/bmojo_shim
rm -rf "$shim" && mkdir -p "$shim/bmojo"
root=$(pwd)
for f in "$root"/bmojo/*.py; do ln -s "$f" "$shim/bmojo/"; done
ln -s "$root/modeling_bmojo" "$shim/bmojo/modeling"
ln -s "$root/configuration" "$shim/bmojo/configuration"
ln -s "$root/kernels" "$shim/bmojo/kernels"
ln -s "$root/hub" "$shim/bmojo/hub"
ln -s "$root/eval" "$shim/bmojo/eval"
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
