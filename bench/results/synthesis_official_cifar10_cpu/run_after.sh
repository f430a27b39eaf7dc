#!/bin/bash
# Issue #26, "after": SRe2L / CDA / DWA with the official recover objective (one batch per IPC index holding one
# image of every class, ONE set of BN statistics over that mixed batch matched to the teacher's running statistics;
# DWA: ascent +rho*g/||g|| on the class-balanced real batch once per IPC index, restored before the next), with
# exactly the protocol of run_before.sh: the committed 83.89 % ConvNet-3-BN teacher
# (bench/teachers/cifar10_jpeg75_convnet3bn_e30), hard-truths small-scale protocol (HL / SL / SL+KD, 300 epochs,
# ConvNet-3 IN student), 3 student seeds, fast student path (bf16 + compile), CPU cut recover 500 Adam steps
# (preset 1000). IPC 10 (3 test evaluations per student) first, then IPC 1 (one). Random, RDED and LIC are not
# rerun: their sets and students are byte-identical to run_before.sh's (this code only changes the recover
# family, the method contract and the parts driver), so the before run's random is this run's baseline too.
# Code pinned in a detached worktree: git worktree add --detach /work/runs/s26/code_after <commit>.
set -u
COMMIT=${COMMIT:?set COMMIT to the pinned revision}
CODE=/work/runs/s26/code_after
[ -d $CODE ] || git -C /work/main worktree add --detach $CODE $COMMIT
export OMP_NUM_THREADS=1 PYTHONPATH=$CODE/src
T=/work/main/bench/teachers/cifar10_jpeg75_convnet3bn_e30
MO=(--method-opt sre2l.iterations=500 --method-opt cda.iterations=500 --method-opt dwa.iterations=500)
S() { nice -n 5 /work/main/.venv/bin/ddkit study hard-truths --preset small-scale \
      --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu --no-progress \
      --teacher $T --regimes hl,sl,slkd --seeds 3 "${MO[@]}" --eval-opt cpu_amp=true --eval-opt compile=true "$@"; }
for m in sre2l cda dwa; do
  echo "$(date -u +%T) ipc10 $m"; S --ipcs 10 --methods $m --eval-opt num_evals=3 --output-dir /work/runs/s26/after10; done
for m in sre2l cda dwa; do
  echo "$(date -u +%T) ipc1 $m"; S --ipcs 1 --methods $m --eval-opt num_evals=1 --output-dir /work/runs/s26/after1; done
echo "$(date -u +%T) all done"
