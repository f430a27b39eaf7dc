#!/bin/bash
# SL+KD saturation in small (hard truths Fig. 1): random vs EL2N-easy at IPC 10/50/100/500, compute budget 1 full-data
# epoch (50,000 samples per student whatever the IPC), HL (hardtruths-hl) and SL+KD (hardtruths-slkd, CutMix views
# relabelled online by the committed 74.49 % ConvNet-3), one seed, students on the bf16+compile path, one test
# evaluation at the end. EL2N-easy uses the same 1-epoch proxy recording as the grid (shared dynamics/ cache).
# Pinned checkout: /work/runs/gridfast/code.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/gridfast/code/src
while ! grep -q "done hl,sl,slkd el2n-easy" /work/runs/gridfast/run_p2.log; do sleep 20; done
echo "$(date -u +%T) start"
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
  --cache-dir /work/runs/cache --device cpu --teacher /work/main/bench/teachers/cifar10_jpeg75_convnet3_e8 \
  --hl-recipe hardtruths-hl --slkd-recipe hardtruths-slkd --student convnet-d3 --methods random,el2n-easy \
  --ipcs ${IPCS:-10,500,50,100} --budgets 1 --regimes hl,slkd --seeds 1 --eval-opt num_evals=1 \
  --eval-opt cpu_amp=true --eval-opt compile=true "${MO[@]}" --no-progress --output-dir /work/runs/satur/out
echo "$(date -u +%T) done rc=$?"
