#!/bin/bash
# Issue #16 (session 22): EL2N-Best at IPC 50 (claim 4's comparator), HL and SL, one seed, once the saturation
# runs are done. Code at 175f806 (s18/code): the window search's candidate students take the evaluator's CPU
# fast path (bf16 + torch.compile), which the IPC-10 search (fp32) did not; said in docs/results.md.
source /work/runs/grid8/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/s18/code/src
TEACHER=/work/main/bench/teachers/cifar10_jpeg75_convnet3_e8
while pgrep -f "bash run_sat.sh" > /dev/null; do sleep 20; done
echo "$(date -u +%T) start el2n-best"
nice -n 5 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER \
  --method-opt el2n-best.search_cpu_amp=true --method-opt el2n-best.search_compile=true \
  --eval-opt cpu_amp=true --eval-opt compile=true --output-dir /work/runs/gridfast/out \
  --ipcs 50 --regimes hl,sl --methods el2n-best --seeds 1
echo "$(date -u +%T) done el2n-best rc=$?"
