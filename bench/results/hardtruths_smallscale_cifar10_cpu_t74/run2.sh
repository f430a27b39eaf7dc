#!/bin/bash
# Continuation of run.sh on a PINNED checkout (code/, main at the time) so later landings do not change the grid.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/grid8/code/src

TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER --output-dir /work/runs/grid8/out "$@"; }
for spec in "hl,sl kcenter" "hl,sl cad-prune" "hl,sl ca2d" "hl,sl el2n-best" "hl,sl el2n-easy" "hl,sl forgetting" "hl,sl ccs" "hl,sl dyn-unc"; do
  echo "$(date -u +%T) start $spec"; Bx --regimes ${spec% *} --methods ${spec#* }; echo "$(date -u +%T) done $spec rc=$?"
done
