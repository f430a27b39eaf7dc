#!/bin/bash
# Issue #16 (session 22): IPC 50, one seed, HL and SL, in gridfast/out (same command as s17/run_b2.sh; the study
# skips cells already done): the SL column of EL2N-easy / RDED / CA2D first (claim 4), then the coresets.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for m in ${METHODS:-ca2d rded el2n-easy forgetting ccs dyn-unc kcenter}; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 50 --regimes hl,sl --methods $m --seeds 1; echo "$(date -u +%T) done $m rc=$?"
done
