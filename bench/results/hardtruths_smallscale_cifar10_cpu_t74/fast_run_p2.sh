#!/bin/bash
# The hard-truths small-scale grid, fast path: the same preset, CPU cuts, sets (shared sets/ and dynamics/ of grid8:
# identical method options, so identical cache keys) and teacher as grid8, students with --cpu-amp --compile
# (bf16 autocast + torch.compile, measured equal to fp32 within noise, bench/results/bf16_accuracy_hardtruths_cpu.json).
# Phase 2: every regime of the methods grid8 did not reach (HL/SL/SL+KD); sets built here, in the shared sets/.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/gridfast/code/src
git -C /work/runs/gridfast/code rev-parse HEAD > /work/runs/gridfast/rev
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
Bx() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
       --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out "$@"; }
for spec in "hl,sl,slkd el2n-easy" "hl,sl,slkd el2n-best" "hl,sl,slkd forgetting" "hl,sl,slkd ccs" "hl,sl,slkd dyn-unc" "hl,sl,slkd ca2d"; do
  echo "$(date -u +%T) start $spec"; Bx --regimes ${spec% *} --methods ${spec#* }; echo "$(date -u +%T) done $spec rc=$?"
done
