#!/bin/bash
# Issue #26, "before": SRe2L / CDA / DWA with the recover objective ddkit had before the fix (main f891cbd:
# per-class BN statistics matched to real per-class targets; DWA descent once per class), beside random, RDED and
# LIC, all with the committed 83.89 % ConvNet-3-BN teacher (bench/teachers/cifar10_jpeg75_convnet3bn_e30), under
# the hard-truths small-scale protocol (HL / SL / SL+KD, 300 epochs, ConvNet-3 IN student), 3 student seeds, fast
# student path (bf16 + compile, measured equal to fp32: bench/results/bf16_accuracy_hardtruths_cpu.json).
# CPU cuts as issue #13's run: recover 500 Adam steps (preset 1000), LIC 50 iterations. IPC 1: one test evaluation.
set -u
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s26/code/src
T=/work/main/bench/teachers/cifar10_jpeg75_convnet3bn_e30
MO=(--method-opt sre2l.iterations=500 --method-opt cda.iterations=500 --method-opt dwa.iterations=500 --method-opt lic.iterations=50)
S() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --preset small-scale \
      --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu --no-progress \
      --teacher $T --regimes hl,sl,slkd --seeds 3 "${MO[@]}" --eval-opt cpu_amp=true --eval-opt compile=true "$@"; }
for m in random rded lic sre2l cda dwa; do
  echo "$(date -u +%T) ipc10 $m"; S --ipcs 10 --methods $m --eval-opt num_evals=3 --output-dir /work/runs/s26/out10; done
for m in random rded lic sre2l cda dwa; do
  echo "$(date -u +%T) ipc1 $m"; S --ipcs 1 --methods $m --eval-opt num_evals=1 --output-dir /work/runs/s26/out1; done
echo "$(date -u +%T) all done"
