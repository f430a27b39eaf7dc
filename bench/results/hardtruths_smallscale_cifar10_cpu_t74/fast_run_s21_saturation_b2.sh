#!/bin/bash
# Issue #16 (session 21): saturation at budget 2, EL2N-easy at IPC 10 and 50 (random's cells at B = 2 ran first in
# run_a2.sh, whose study was stopped after random IPC 50 so that the session ends with gap pairs). Same command.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
  --cache-dir /work/runs/cache --device cpu --teacher $TEACHER \
  --hl-recipe hardtruths-hl --slkd-recipe hardtruths-slkd --student convnet-d3 --methods el2n-easy \
  --ipcs 10,50 --budgets 2 --regimes hl,slkd --seeds 1 --eval-opt num_evals=1 \
  --eval-opt cpu_amp=true --eval-opt compile=true "${MO[@]}" --no-progress --output-dir /work/runs/satur/out
echo "$(date -u +%T) done rc=$?"
