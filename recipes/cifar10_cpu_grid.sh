#!/usr/bin/env bash
# CPU-sized accuracy runs committed in bench/results (2 cores, no GPU): CIFAR-10 (JPEG q75), ConvNet-3
# teacher = student, recipe `cim`, compute budget 0.2 full-dataset epochs (10,000 samples seen per student),
# 3 seeds, last-epoch accuracy. Every command is resumable (finished cells are skipped).
set -euo pipefail
DATA=tar:${DATA_TAR:-../shared/data/cifar10-jpeg75.tar.gz}
T=${TEACHER:-runs/teachers/cifar10_jpeg75_convnet3}
COMMON=(--dataset "$DATA" --teacher "$T" --recipe cim --budget-epochs 0.2 --seeds 3 --device cpu)
OUT=bench/results/accuracy_cifar10_cpu.json
python bench/accuracy.py "${COMMON[@]}" --methods random --ipcs 10 --regimes hl,sl,slkd --output $OUT
python bench/accuracy.py "${COMMON[@]}" --methods lic --ipcs 10 --regimes slkd,hl,sl --output $OUT
# Ablation (LIC Table 7 style, IPC 10, hard labels): squeeze of random images / + selection, no compensation.
# (+compensation = lic_ipc10 HL above; +relabel = lic_ipc10 SL+KD above.)
python bench/accuracy.py "${COMMON[@]}" --methods lic --ipcs 10 --regimes hl --label orig \
    --method-opt lic.selection=random --method-opt lic.iterations=0 --output bench/results/ablation_cifar10_cpu.json
python bench/accuracy.py "${COMMON[@]}" --methods lic --ipcs 10 --regimes hl --label sel \
    --method-opt lic.iterations=0 --output bench/results/ablation_cifar10_cpu.json
python bench/accuracy.py "${COMMON[@]}" --methods random --ipcs 1,50 --regimes hl,sl,slkd --output $OUT
# CPU cuts: LIC at IPC 1 and 50 under SL+KD only; IPC 50 with 20 compensation iterations instead of 200.
python bench/accuracy.py "${COMMON[@]}" --methods lic --ipcs 1,50 --regimes slkd \
    --method-opt lic@50.iterations=20 --output $OUT
# RDED beside LIC and random under the same protocol (IPC 10, SL+KD).
python bench/accuracy.py "${COMMON[@]}" --methods rded --ipcs 10 --regimes slkd,hl --output $OUT
# CAD-Prune, CA2D, EL2N-easy and CCS beside these: recipes/hardtruths_cifar10_cpu.sh (all three regimes, 3 budgets).
