#!/bin/bash
# Issue #16: ConvNet-3 teacher towards its plateau: 30 epochs one-cycle (the 8-epoch teacher's recipe otherwise),
# bf16 autocast + torch.compile on CPU (bench/results/teacher_compile_cpu.json), test after every epoch.
# Resumable: rerun this script after a kill (teachers/..._e30.ckpt). Code pinned at 935f15c.
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/tcode/src
nice -n 5 /work/main/.venv/bin/ddkit teacher train --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
  --cache-dir /work/runs/cache --device cpu --model convnet-d3 --epochs 30 --eval-every 1 --cpu-amp --compile \
  --no-progress --output /work/runs/s17/teachers/cifar10_jpeg75_convnet3_e30
echo "$(date -u +%T) done rc=$?"
