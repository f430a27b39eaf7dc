#!/bin/bash
# Issue #16 (session 22): LIC at IPC 50 (lic.iterations=50 as the IPC-10 grid), distilled class by class with
# `ddkit distill --shard I/2 --resume --no-merge` (the study builds a set all-or-nothing; parts survive a session's
# end), two one-thread shards started as the teacher's and the IPC-50 coreset job's slots free up (WAIT_FOR), then
# `ddkit merge` into the study's set name for these options (lic-ipc50-seed0-<config_hash({'iterations': 50})>)
# and the study's HL and SL cells. Usage: SHARD=0 WAIT_FOR=run_teacher_bn.sh bash run_d.sh
# As run (2026-12-02): SHARD=1 WAIT_FOR=run_c.sh at 01:20 (done 01:31; its merge refused: 5 classes missing),
# SHARD=0 WAIT_FOR=none-such at 01:32 (done 01:40; merged, then the study: HL and SL done 01:52).
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
while pgrep -f "bash $WAIT_FOR" > /dev/null; do sleep 20; done
SET=/work/runs/gridfast/out/sets/lic-ipc50-seed0-67390b0a1a0e
OUT=/work/runs/s18/lic50
echo "$(date -u +%T) start lic distill shard $SHARD/2"
nice -n 5 /work/main/.venv/bin/ddkit distill --method lic --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
  --cache-dir /work/runs/cache --device cpu --teacher $TEACHER --ipc 50 --seed 0 --iterations 50 \
  --no-progress --shard $SHARD/2 --resume --no-merge --output $OUT || exit 1
echo "$(date -u +%T) done lic distill shard $SHARD/2"
# The shard that finishes last (all 10 classes in OUT.parts/) merges and runs the study.
exec 9> /work/runs/s18/lic50.lock; flock 9
if ! pgrep -f -- "--shard $(( 1 - SHARD ))/2" > /dev/null; then
  [ -f $SET/meta.json ] || { /work/main/.venv/bin/ddkit merge $OUT && cp -r $OUT $SET; } || exit 1
  echo "$(date -u +%T) start lic study"
  nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
    --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out \
    --ipcs 50 --regimes hl,sl --methods lic --seeds 1
  echo "$(date -u +%T) done lic rc=$?"
fi
