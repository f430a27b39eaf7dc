#!/bin/bash
# Issue #13: SRe2L / CDA / DWA beside random, RDED and LIC, all with the committed ConvNet-3-BN teacher (79.18 %),
# under the hard-truths small-scale protocol (HL / SL / SL+KD, 300 epochs, ConvNet-3 IN student), 3 student seeds,
# fast student path (bf16 + compile, measured equal to fp32: bench/results/bf16_accuracy_hardtruths_cpu.json).
# CPU cuts: recover 500 Adam steps (preset 1000), LIC 50 iterations (as the #16 grid). IPC 1: one test evaluation.
set -u
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s13/code/src
T=/work/main/bench/teachers/cifar10_jpeg75_convnet3bn_e8
MO=(--method-opt sre2l.iterations=500 --method-opt cda.iterations=500 --method-opt dwa.iterations=500 --method-opt lic.iterations=50)
S() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --preset small-scale \
      --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu --no-progress \
      --teacher $T --regimes hl,sl,slkd --seeds 3 "${MO[@]}" --eval-opt cpu_amp=true --eval-opt compile=true "$@"; }
for m in sre2l cda dwa random rded lic; do
  echo "$(date -u +%T) ipc1 $m"; S --ipcs 1 --methods $m --eval-opt num_evals=1 --output-dir /work/runs/s13/out1; done
for m in sre2l cda dwa random rded lic; do
  echo "$(date -u +%T) ipc10 $m"; S --ipcs 10 --methods $m --eval-opt num_evals=3 --output-dir /work/runs/s13/out10; done
echo "$(date -u +%T) all done"
