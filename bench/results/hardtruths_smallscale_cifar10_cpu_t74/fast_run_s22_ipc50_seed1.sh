#!/bin/bash
# Issue #16 (session 22): a second student seed for claim 4's IPC-50 HL cells (the study's top-up: `--seeds 2` on
# the 1-seed folder trains only seed 1 of each cell). PART=a: random, CAD-Prune, EL2N-Best (code 175f806 and the
# same el2n-best options as its set, so the set is loaded, not rebuilt); PART=b: RDED, CA2D (code 6faf8ad).
source /work/runs/grid8/opts.sh
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
if [ "$PART" = a ]; then
  export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s18/code/src; M=random,cad-prune,el2n-best
  X=(--method-opt el2n-best.search_cpu_amp=true --method-opt el2n-best.search_compile=true)
else
  export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src; M=rded,ca2d; X=()
fi
echo "$(date -u +%T) start $M"
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" "${X[@]}" --teacher $TEACHER \
  --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out \
  --ipcs 50 --regimes hl --methods $M --seeds 2
echo "$(date -u +%T) done $M rc=$?"
