#!/bin/bash
# Issue #16 (session 21): claim 4's second pair at IPC 50 (HL, one seed) once CAD-Prune's IPC-50 cells are done:
# CA2D (its pool comes from the same cached K = 3 CAD scoring run) and RDED, in gridfast/out. Code pinned at 6faf8ad.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
while kill -0 5117 2>/dev/null; do sleep 15; done
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for m in ca2d rded; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 50 --regimes hl --methods $m --seeds 1; echo "$(date -u +%T) done $m rc=$?"
done
