#!/bin/bash
# Sequential driver in the brief's priority order (random, LIC, RDED, CAD-Prune, CA2D, EL2N-Best, herding,
# then the rest). One process at a time: my CPU share is one autogroup's, splitting it buys nothing.
# ssA (teacher-free) holds random HL, run before the teacher existed; ssB starts from ssA's rows and sets.
cd /work/runs/protocol/code
source /work/runs/protocol/opts.sh
export OMP_NUM_THREADS=1 PYTHONPATH=/work/runs/protocol/code/src
while pgrep -f "methods random --output-dir /work/runs/protocol/ssA" >/dev/null; do sleep 10; done
TEACHER=/work/runs/protocol/teacher/cifar10_jpeg75_convnet3_e1
while [ ! -f $TEACHER.json ]; do sleep 15; done
sleep 5
B=/work/runs/protocol/ssB
mkdir -p $B/sets $B/dynamics
cp -rn /work/runs/protocol/ssA/sets/. $B/sets/
[ -d /work/runs/protocol/ssA/dynamics ] && cp -rn /work/runs/protocol/ssA/dynamics/. $B/dynamics/
[ -f $B/results.csv ] || cp /work/runs/protocol/ssA/results.csv $B/results.csv
Bx() { nice -n 10 /work/main/.venv/bin/ddkit study hard-truths "${COMMON[@]}" "${MO[@]}" --teacher $TEACHER --output-dir $B "$@"; }
Bx --regimes hl,sl --methods random
Bx --regimes hl,sl --methods lic
Bx --regimes hl --methods rded
Bx --regimes hl,sl --methods herding
Bx --regimes sl --methods rded
Bx --regimes hl --methods cad-prune
Bx --regimes hl --methods ca2d
Bx --regimes hl --methods el2n-best
Bx --regimes sl --methods cad-prune
Bx --regimes sl --methods ca2d
Bx --regimes sl --methods el2n-best
for m in kcenter forgetting el2n-easy ccs dyn-unc; do Bx --regimes hl,sl --methods $m; done
