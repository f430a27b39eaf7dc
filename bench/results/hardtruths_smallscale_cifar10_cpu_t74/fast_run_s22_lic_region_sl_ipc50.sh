#!/bin/bash
# Issue #16 (session 22): LIC at IPC 50 under SL with its region labels (whole image + one per 2x2 cell) beside the
# paper's one-label rule of the grid, as lic_region_sl_summary.json did at IPC 10; fast path as the IPC-50 cells.
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/code/src
nice -n 5 /work/main/.venv/bin/ddkit evaluate /work/runs/gridfast/out/sets/lic-ipc50-seed0-67390b0a1a0e \
  --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu \
  --teacher /work/main/bench/teachers/cifar10_jpeg75_convnet3_e8 --recipe hardtruths-sl --regime sl \
  --student convnet-d3 --seeds 1 --sl-labels region --num-evals 3 --cpu-amp --compile --no-progress \
  --output /work/runs/s18/lic50_region
echo "$(date -u +%T) done rc=$?"
