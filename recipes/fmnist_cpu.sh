#!/usr/bin/env bash
# CPU-sized LIC vs random on Fashion-MNIST (exact, Debian package dataset-fashion-mnist), ConvNet-3 teacher =
# student (1 epoch on CPU), recipe `cim`, SL+KD, compute budget 0.1 full-dataset epochs (6,000 samples per
# student), 3 seeds, last-epoch accuracy. IPC 50 uses 20 compensation iterations instead of 200 on CPU.
set -euo pipefail
T=${TEACHER:-runs/teachers/fmnist_convnet3}
COMMON=(--dataset fashion-mnist --teacher "$T" --recipe cim --budget-epochs 0.1 --seeds 3 --device cpu
        --set-dir runs/bench/sets_fmnist)
OUT=bench/results/accuracy_fmnist_cpu.json
python bench/accuracy.py "${COMMON[@]}" --methods random,lic --ipcs 10,1 --regimes slkd --output $OUT
python bench/accuracy.py "${COMMON[@]}" --methods random,lic --ipcs 50 --regimes slkd \
    --method-opt lic@50.iterations=20 --output $OUT
