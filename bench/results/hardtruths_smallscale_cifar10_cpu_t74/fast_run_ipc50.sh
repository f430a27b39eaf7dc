#!/bin/bash
# IPC 50, fast path (same pinned code, opts, teacher and folders as run.sh): two processes side by side.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/gridfast/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
case "$1" in
  a) Bx --ipcs 50 --regimes hl,sl --methods cad-prune ;;
  b) for m in random herding el2n-easy rded; do Bx --ipcs 50 --regimes hl --methods $m; done ;;
esac
