#!/bin/bash
# Issue #16 small-scale grid with the committed 74.49 % ConvNet-3 teacher (bench/teachers/). One process,
# one cell group at a time; each finished cell is skipped on a rerun (resumable).
cd /work/main
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1
git rev-parse HEAD > /work/runs/grid8/rev
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER --output-dir /work/runs/grid8/out "$@"; }
for spec in "hl,sl lic" "hl,sl random" "hl,sl rded" "hl,sl herding" "hl,sl kcenter" "hl,sl cad-prune" "hl,sl ca2d" "hl,sl el2n-best" "hl,sl el2n-easy" "hl,sl forgetting" "hl,sl ccs" "hl,sl dyn-unc"; do
  echo "$(date -u +%T) start $spec"; Bx --regimes ${spec% *} --methods ${spec#* }; echo "$(date -u +%T) done $spec rc=$?"
done
