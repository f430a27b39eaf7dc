#!/bin/bash
# Issue #16 (session 21): seeds 1-2 (and fast-path seed 0 where grid8 ran fp32) for the IPC-10 cells still short of 3:
# LIC, k-center, CCS (HL/SL/SL+KD) and forgetting SL+KD. Study top-up in gridfast/out, code pinned at 6faf8ad.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for m in ${METHODS:-lic kcenter ccs forgetting}; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 10 --regimes hl,sl,slkd --methods $m --seeds 3; echo "$(date -u +%T) done $m rc=$?"
done
