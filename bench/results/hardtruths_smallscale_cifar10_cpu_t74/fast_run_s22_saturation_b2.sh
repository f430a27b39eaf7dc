#!/bin/bash
# Issue #16 (session 22): saturation at budget 2, the rest: random and EL2N-easy at IPC 100, then EL2N-easy at 500
# (random's 500 cell ran in session 21 and is skipped by the study's resume). Same command as s17/run_a3.sh.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
for ipc in 100 500; do
echo "$(date -u +%T) start ipc $ipc"
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
  --cache-dir /work/runs/cache --device cpu --teacher $TEACHER \
  --hl-recipe hardtruths-hl --slkd-recipe hardtruths-slkd --student convnet-d3 --methods random,el2n-easy \
  --ipcs $ipc --budgets 2 --regimes hl,slkd --seeds 1 --eval-opt num_evals=1 \
  --eval-opt cpu_amp=true --eval-opt compile=true "${MO[@]}" --no-progress --output-dir /work/runs/satur/out
echo "$(date -u +%T) done ipc $ipc rc=$?"
done
