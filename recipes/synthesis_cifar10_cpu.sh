#!/usr/bin/env bash
# CPU-sized SRe2L / CDA / DWA comparison (issue #13), the run behind bench/results/synthesis_cifar10_cpu/.
# CIFAR-10 (JPEG q75). The machine was ~10x oversubscribed, so everything is cut down, and stated so:
# teacher ConvNet-3-BN of width 32 trained on 1,000 images per class for 3 epochs (recipes: see
# bench/results/synthesis_cifar10_cpu/teacher.json); student ConvNet-3 (instance norm) of width 32; IPC 10 and 1;
# budget 0.05 FULL-data epochs (2,500 samples per student); regimes hl / sl / slkd with the hard-truths recipes;
# one test evaluation at the end; SEEDS (default 1) student seeds; every recover method runs ITERATIONS (default
# 100) Adam steps instead of the preset's 1000. Resumable: rerun and finished cells are skipped. Then the
# label-store check: relabel the SRe2L IPC-10 set with the sre2l recipe's views (25 epochs = the plan) and
# train from the store vs the online teacher, same recipe, budget and FKD_SEEDS (default 3) seeds.
set -euo pipefail
DATA=tar:${DATA_TAR:-/work/shared/data/cifar10-jpeg75.tar.gz}
T=${TEACHER:-/work/runs/synthesis/teacher_convnet3bn_w32}
OUT=${OUT:-/work/runs/synthesis/study}
IT=${ITERATIONS:-100}
SEEDS=${SEEDS:-1}
FKD_SEEDS=${FKD_SEEDS:-3}
COMMON=(--dataset "$DATA" --cache-dir /work/runs/cache --teacher "$T" --device cpu --no-progress)
ddkit study hard-truths "${COMMON[@]}" --student convnet-d3 --student-width 32 \
    --ipcs 10,1 --budgets 0.05 --regimes hl,sl,slkd --seeds "$SEEDS" \
    --methods random,sre2l,cda,dwa \
    --method-opt sre2l.iterations="$IT" --method-opt cda.iterations="$IT" --method-opt dwa.iterations="$IT" \
    --eval-opt num_evals=1 --output-dir "$OUT" "$@"
SET=$(ls -d "$OUT"/sets/sre2l-ipc10-seed0* | head -1)
if [ ! -d "$SET/fkd" ]; then
    ddkit relabel "$SET" --teacher "$T" --recipe sre2l --epochs 25 --device cpu --no-progress
fi
for L in online stored; do
    [ -f "$OUT/fkd_$L/summary.json" ] || ddkit evaluate "$SET" "${COMMON[@]}" --student convnet-d3 --student-width 32 \
        --regime slkd --recipe sre2l --labels "$L" --budget-epochs 0.05 --seeds "$FKD_SEEDS" --num-evals 1 \
        --output "$OUT/fkd_$L"
done
mkdir -p bench/results/synthesis_cifar10_cpu
cp "$OUT"/results.csv "$OUT"/report.md "$OUT"/study.json "$OUT"/runs.jsonl bench/results/synthesis_cifar10_cpu/
for L in online stored; do cp "$OUT/fkd_$L/summary.json" "bench/results/synthesis_cifar10_cpu/fkd_${L}_summary.json"; done
