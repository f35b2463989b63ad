#!/usr/bin/env bash
# Wheels for running benchmarks/gpu.py on a GPU machine that cannot reach a package index.
#
#     bash benchmarks/gpu_wheels.sh [DIR]     # here, in the repository's root: downloads into DIR (.whl)
#
# The machine it is for has Python 3.12 with torch, transformers, peft, accelerate, numpy, pandas,
# pyarrow, huggingface-hub, scipy, typer, rich and pyyaml, but not optuna, optuna-dashboard,
# bitsandbytes or datasets. This fetches those and their dependencies that such a machine lacks,
# at the versions installed here (what lorasweep is tested with), as x86-64 wheels for CPython 3.12
# (about 53 MB). Then, there, from a copy of this working tree with DIR in it:
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#       && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu.py --steps 20 --runs 1 --json results/gpu.json
#
# (lorasweep itself runs from the tree through PYTHONPATH: nothing is installed but the wheels.)
set -euo pipefail
dest=${1:-.whl}
mkdir -p "$dest"
pinned() {  # NAME==VERSION as installed here, or NAME when it is not
    python - "$@" <<'PY'
import importlib.metadata as m, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        print(name)
PY
}
# lorasweep's missing dependencies, then theirs (optuna: alembic, sqlalchemy, greenlet, mako,
# colorlog; optuna-dashboard: bottle; datasets: dill, multiprocess)
packages=$(pinned optuna optuna-dashboard bitsandbytes datasets alembic sqlalchemy greenlet mako colorlog \
    bottle dill multiprocess)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 any; do
    platforms+=(--platform "$p")
done
# shellcheck disable=SC2086 # one argument per package
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" $packages
ls -1 "$dest"
du -sh "$dest"
