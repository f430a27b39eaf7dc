#!/bin/bash
# Issue #26, "before", continued: the same study as run_before.sh for one method per invocation, each into its own
# output folder so that CDA and DWA run beside the SRe2L cell under a loaded machine (same code f891cbd, same
# protocol, teacher and cuts; each method's gap is taken to the random row of /work/runs/s26/out10).
# Usage: run_before_par.sh METHOD IPC
set -u
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s26/code/src
m=$1; ipc=$2; ne=3; [ "$ipc" = 1 ] && ne=1
T=/work/main/bench/teachers/cifar10_jpeg75_convnet3bn_e30
MO=(--method-opt sre2l.iterations=500 --method-opt cda.iterations=500 --method-opt dwa.iterations=500 --method-opt lic.iterations=50)
echo "$(date -u +%T) ipc$ipc $m"
/work/main/.venv/bin/ddkit study hard-truths --preset small-scale \
  --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache --device cpu --no-progress \
  --teacher $T --regimes hl,sl,slkd --seeds 3 "${MO[@]}" --eval-opt cpu_amp=true --eval-opt compile=true \
  --ipcs $ipc --methods $m --eval-opt num_evals=$ne --output-dir /work/runs/s26/out${ipc}_$m
echo "$(date -u +%T) done"
