#!/bin/bash
# Issue #16 (session 21): IPC 50, one seed, HL and SL, in gridfast/out (same opts/teacher/protocol as the IPC-10 grid).
# Order: the claim-4 pair first (CAD-Prune at K = 3 vs EL2N-Best), then the SL column of the three HL-only methods,
# then the rest. Code pinned at 6faf8ad.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for m in ${METHODS:-cad-prune el2n-best random herding el2n-easy rded ca2d lic kcenter ccs forgetting dyn-unc}; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 50 --regimes hl,sl --methods $m --seeds 1; echo "$(date -u +%T) done $m rc=$?"
done
