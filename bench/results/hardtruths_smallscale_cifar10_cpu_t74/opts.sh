# CPU cuts shared by both phases (stated in docs/results.md). The five dynamics methods share ONE proxy
# recording: identical proxy_* options (1 epoch, 4 record points, 1 run, EL2N at epoch 1).
P="proxy_epochs=1 proxy_record_every=48 proxy_runs=1 proxy_early_epochs=1.0"
MO=()
for m in forgetting el2n-easy ccs dyn-unc el2n-best; do for kv in $P; do MO+=(--method-opt "$m.$kv"); done; done
MO+=(--method-opt dyn-unc.span=3)
MO+=(--method-opt el2n-best.offsets=[0.0,0.4,0.8])
MO+=(--method-opt cad-prune.points_per_epoch=10 --method-opt ca2d.points_per_epoch=10)
COMMON=(--preset small-scale --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz --cache-dir /work/runs/cache
        --device cpu --ipcs 10 --seeds 1 --eval-opt num_evals=3 --no-progress)
MO+=(--method-opt lic.iterations=50)
