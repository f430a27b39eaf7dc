#!/bin/bash
# Issue #16 (session 21): IPC 50, one seed, HL and SL, in gridfast/out, in the teacher's slot once the ConvNet-3
# teacher is done. run_b.sh's loop was stopped after its CAD-Prune cell (whose K = 3 scoring run records 30
# points over all 50,000 images in fp32: ~110 CPU-min), so this takes the rest of its queue: EL2N-Best (claim 4's
# comparator), the SL column of random / herding / EL2N-easy, then RDED, LIC, k-center, CCS, forgetting, Dyn-Unc.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
while pgrep -f "bash run_teacher.sh" > /dev/null; do sleep 20; done
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for m in ${METHODS:-el2n-best random herding el2n-easy rded lic kcenter ccs forgetting dyn-unc}; do
  echo "$(date -u +%T) start $m"; Bx --ipcs 50 --regimes hl,sl --methods $m --seeds 1; echo "$(date -u +%T) done $m rc=$?"
done
