#!/bin/bash
# Continuation of run_all.sh (same order) with the LIC region-label SL cell inserted after RDED HL.
cd /work/runs/protocol/code
source /work/runs/protocol/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/protocol/code/src
TEACHER=/work/runs/protocol/teacher/cifar10_jpeg75_convnet3_e1
B=/work/runs/protocol/ssB
while kill -0 19543 2>/dev/null; do sleep 10; done
Bx() { nice -n 10 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER --output-dir $B "$@"; }
: lic done by pid 19543
Bx --regimes hl --methods rded
LIC=$(ls -d $B/sets/lic-ipc10-seed0*)
[ -f /work/runs/protocol/lic_region/summary.json ] || nice -n 10 /work/main/.venv/bin/ddkit evaluate $LIC \
  --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu --teacher $TEACHER \
  --recipe hardtruths-sl --regime sl --sl-labels region --student convnet-d3 --seeds 1 --epochs 300 --num-evals 3 \
  --no-progress --output /work/runs/protocol/lic_region --overwrite
Bx --regimes hl,sl --methods herding
Bx --regimes sl --methods rded
Bx --regimes hl --methods cad-prune
Bx --regimes hl --methods ca2d
Bx --regimes hl --methods el2n-best
Bx --regimes sl --methods cad-prune
Bx --regimes sl --methods ca2d
Bx --regimes sl --methods el2n-best
for m in kcenter forgetting el2n-easy ccs dyn-unc; do Bx --regimes hl,sl --methods $m; done
