#!/bin/bash
# Issue #16 (session 21): EL2N-Best at IPC 50 was stopped (its window search trains 3 candidate students of 300
# epochs over 500 images with DSA in fp32: ~75 CPU-min, past the session's end); this slot runs the SL column of
# random and herding at IPC 50 instead. Code pinned at 6faf8ad.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for m in random herding; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 50 --regimes sl --methods $m --seeds 1; echo "$(date -u +%T) done $m rc=$?"
done
