#!/bin/bash
# Issue #16 (session 22): LIC at IPC 50 (lic.iterations=50 as the IPC-10 grid), distilled class by class with
# `ddkit distill --resume` (the study builds a set all-or-nothing; this survives a session's end), into the
# study's set name for these options (lic-ipc50-seed0-<config_hash({'iterations': 50})>), then HL and SL.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
while pgrep -f "bash run_c.sh" > /dev/null; do sleep 20; done
SET=/work/runs/gridfast/out/sets/lic-ipc50-seed0-67390b0a1a0e
echo "$(date -u +%T) start lic distill"
if [ ! -f $SET/meta.json ]; then
  nice -n 5 /work/main/.venv/bin/ddkit distill --method lic --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
    --cache-dir /work/runs/cache --device cpu --teacher $TEACHER --ipc 50 --seed 0 --iterations 50 \
    --no-progress --resume --output /work/runs/s18/lic50 || exit 1
  cp -r /work/runs/s18/lic50 $SET
fi
echo "$(date -u +%T) start lic study"
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
  --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out \
  --ipcs 50 --regimes hl,sl --methods lic --seeds 1
echo "$(date -u +%T) done lic rc=$?"
