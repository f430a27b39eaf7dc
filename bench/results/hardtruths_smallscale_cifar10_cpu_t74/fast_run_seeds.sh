#!/bin/bash
# Issue #16: seeds 1-2 for every IPC-10 cell of the small-scale grid, fast path, in gridfast/out (same sets, options,
# teacher, protocol); the 12 cells grid8 ran in fp32 get 3 fast-path seeds here (seed 0 twice: fp32 vs fast check).
# Study top-up (code b44d4ee): only the missing students of a cell are trained.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s16/code/src
git -C /work/runs/s16/code rev-parse HEAD > /work/runs/s16/rev
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out --seeds 3 "$@"; }
for m in ${METHODS:-random herding el2n-easy el2n-best cad-prune rded ca2d lic kcenter ccs forgetting dyn-unc}; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 10 --regimes hl,sl,slkd --methods $m; echo "$(date -u +%T) done $m rc=$?"
done
