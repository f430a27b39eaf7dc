#!/bin/bash
# Issue #16 (session 21), after run_a.sh: (1) the CAD-Prune early-checkpoint ablation (paper Table 14) at IPC 10:
# score the first K = 0.6 epoch of a scoring run whose LR schedule is laid out for 6 epochs, HL, 3 seeds, in its
# own folder (its compute-matched twin is the grid's cad-prune cell); (2) the saturation sweep at budgets 0.5 and 2
# (same command as satur/run.sh, budget 1 is done). Code pinned at 6faf8ad.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
while pgrep -f "bash run_a.sh" > /dev/null; do sleep 20; done
echo "$(date -u +%T) start ablation"
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
  --method-opt cad-prune.early_checkpoint_of=6 --eval-opt cpu_amp=true --eval-opt compile=true \
  --output-dir /work/runs/s17/ablation --ipcs 10 --regimes hl --methods cad-prune --seeds 3
echo "$(date -u +%T) done ablation rc=$?"
for b in 0.5 2; do
  echo "$(date -u +%T) start saturation budget $b"
  nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
    --cache-dir /work/runs/cache --device cpu --teacher $TEACHER \
    --hl-recipe hardtruths-hl --slkd-recipe hardtruths-slkd --student convnet-d3 --methods random,el2n-easy \
    --ipcs ${IPCS:-10,500,50,100} --budgets $b --regimes hl,slkd --seeds 1 --eval-opt num_evals=1 \
    --eval-opt cpu_amp=true --eval-opt compile=true "${MO[@]}" --no-progress --output-dir /work/runs/satur/out
  echo "$(date -u +%T) done saturation budget $b rc=$?"
done
