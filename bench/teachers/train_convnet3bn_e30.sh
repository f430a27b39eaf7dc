#!/bin/bash
# Issue #16 (session 22): ConvNet-3-BN teacher towards its plateau (the synthesis family's BN teacher): 30 epochs
# one-cycle, bf16 + torch.compile on CPU, test after every epoch. Resumable (rerun: OUTPUT.ckpt after every epoch).
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s17/tcode/src
nice -n 5 /work/main/.venv/bin/ddkit teacher train --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
  --cache-dir /work/runs/cache --device cpu --model convnet-d3-bn --epochs 30 --eval-every 1 --cpu-amp --compile \
  --no-progress --output /work/runs/s17/teachers/cifar10_jpeg75_convnet3bn_e30
echo "$(date -u +%T) done rc=$?"
