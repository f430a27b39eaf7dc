#!/bin/bash
# Issue #12: the matching sets (CPU preset, distilled earlier: /work/runs/matching/sets; DSA IPC 10 distilled here)
# beside random and k-center, under the hard-truths small-scale protocol (HL / SL, 300 epochs, ConvNet-3 student),
# 3 student seeds, the committed 74.49 % ConvNet-3 teacher for SL (DATM's stale 52.6 %-teacher `soft` key removed;
# its `learned` labels stay), fast student path (bf16 + compile). IPC 1: one test evaluation; IPC 10: three.
set -u
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s13/code/src
T=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
B=/work/runs/matching/experts_cpu
MO=(); for m in dc dsa dm mtt datm; do MO+=(--method-opt $m.preset=cpu); done
MO+=(--method-opt mtt.buffer=$B --method-opt datm.buffer=$B)
S() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --preset small-scale \
      --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu --no-progress \
      --teacher $T --regimes hl,sl --seeds 3 "${MO[@]}" --eval-opt cpu_amp=true --eval-opt compile=true "$@"; }
for m in random kcenter dc dsa dm mtt datm; do
  echo "$(date -u +%T) ipc1 $m"; S --ipcs 1 --methods $m --eval-opt num_evals=1 --output-dir /work/runs/m12/out1; done
for m in random kcenter dc dm mtt datm dsa; do
  echo "$(date -u +%T) ipc10 $m"; S --ipcs 10 --methods $m --eval-opt num_evals=3 --output-dir /work/runs/m12/out10; done
echo "$(date -u +%T) all done"
