"""Does bf16 on CPU (`--cpu-amp`) keep the accuracy? Short student runs, fp32 vs bf16, seed by seed.

One random real subset (IPC --ipc, seed 0) is evaluated with `ddkit.evaluate.evaluate` per regime
(HL: the `dc` recipe, DD-Ranking's ConvNet-3 + DSA + SGD protocol; SL+KD: the `cim` recipe with the
online teacher), for each seed and each variant in turn (fp32, bf16 [, compile variants]), so the
variants share the machine's load alike. Each finished run is written at once (resumable); the JSON
keeps per-run accuracy (last epoch, full test split), training images/s and process CPU seconds,
and per variant mean ± std (ddof 0) over seeds. bf16 becomes the default only when its mean is within
the seeds' noise of fp32's under both regimes.

    OMP_NUM_THREADS=1 nice -n 10 python bench/bf16_accuracy.py --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
        --cache-dir /work/runs/cache --teacher /work/runs/teachers/cifar10_jpeg75_convnet3bn_e3 \
        --regimes hl,slkd --epochs 100 --seeds 3 --output bench/results/bf16_accuracy_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ddkit.config import to_dict
from ddkit.data import create_dataset
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method
from ddkit.utils import atomic_write_bytes, cpu_bf16_native, git_revision, machine_info

RECIPE = {"hl": "dc", "slkd": "cim"}
#: --protocol hardtruths: the paper's small-scale recipes (Table 4), so the fp32 runs double as the random
#: cells of the hard-truths grid (issue #16).
PROTOCOLS = {"ddranking": RECIPE, "hardtruths": {"hl": "hardtruths-hl", "sl": "hardtruths-sl",
                                                 "slkd": "hardtruths-slkd"}}
# every variant names both switches: the evaluator's automatic choice (evaluate/fastpath.py) must not pick for it
VARIANTS = {"fp32": {"exact": True}, "bf16": {"cpu_amp": True, "compile": False},
            "compile": {"cpu_amp": False, "compile": True}, "bf16_compile": {"cpu_amp": True, "compile": True}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--teacher", default=None, help="a ddkit teacher checkpoint (slkd), or --teacher-expert")
    p.add_argument("--teacher-expert", default=None, help="slkd teacher = the last checkpoint of expert 0 of this "
                   "ddkit expert buffer (a trained ConvNet; used when no teacher checkpoint exists)")
    p.add_argument("--regimes", default="hl,slkd")
    p.add_argument("--protocol", default="ddranking", choices=sorted(PROTOCOLS),
                   help="ddranking: HL = the dc recipe, SL+KD = cim; hardtruths: the hardtruths-* recipes")
    p.add_argument("--variants", default="fp32,bf16")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--test-per-class", type=int, default=0, help="score on the first N test images of each class "
                   "(a fixed stratified subset, to save CPU on a crowded machine); 0 = the full test split")
    p.add_argument("--output", required=True)
    args = p.parse_args()
    unknown = [r for r in args.regimes.split(",") if r not in PROTOCOLS[args.protocol]]
    if unknown:
        p.error(f"--protocol {args.protocol} has no recipe for regime(s) {unknown}; "
                f"it has {sorted(PROTOCOLS[args.protocol])}")
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    out = Path(args.output)
    state = json.loads(out.read_text()) if out.exists() else {"runs": []}
    state.update(command=" ".join(["python"] + sys.argv), git_revision=git_revision(), machine=machine_info(dev),
                 cpu_bf16_native=cpu_bf16_native(), data=f"{args.dataset} random subset IPC {args.ipc} (seed 0)",
                 headline="last-epoch test accuracy, mean ± std (ddof 0) over seeds")
    done = {(r["regime"], r["variant"], r["seed"]) for r in state["runs"]}
    train = create_dataset(args.dataset, split="train", cache_dir=args.cache_dir)
    test = create_dataset(args.dataset, split="test", cache_dir=args.cache_dir)
    if args.test_per_class:
        keep = torch.cat([torch.nonzero(test.labels == c).flatten()[:args.test_per_class]
                          for c in range(len(test.classes))]).sort().values
        test = test.subset(keep)
    state["test_images"] = len(test)
    ds = create_method("random", ipc=args.ipc, seed=0)(train, progress=False)
    teacher = None
    needs_teacher = any(r in ("sl", "slkd") for r in args.regimes.split(","))
    if needs_teacher and args.teacher_expert:
        teacher = expert_teacher(Path(args.teacher_expert), train)
        from ddkit.teachers import accuracy

        state["teacher"] = {"expert_buffer": args.teacher_expert, "checkpoint": "expert_0000, last epoch",
                            "arch": teacher.arch, "test_acc": accuracy(teacher.model, test, teacher.mean, teacher.std,
                                                                       device=dev, batch_size=500)}
    elif needs_teacher:
        from ddkit.teachers import load_teacher

        teacher = load_teacher(args.teacher, dataset=train, device=dev)
        state["teacher"] = {"path": args.teacher, "arch": teacher.arch, "test_acc": teacher.meta.get("accuracy")}
    variants = [v for v in args.variants.split(",") if v]
    recipes = PROTOCOLS[args.protocol]
    state["protocol"] = args.protocol
    for regime in args.regimes.split(","):
        for seed in range(args.seeds):
            for v in variants:
                if (regime, v, seed) in done:
                    continue
                cfg = EvalConfig(recipe=recipes[regime], regime=regime, student="convnet-d3", seeds=1, seed=seed,
                                 epochs=args.epochs, num_evals=1, **VARIANTS[v])
                t0, c0 = time.perf_counter(), time.process_time()
                res = evaluate(ds, test, cfg, teacher if regime in ("sl", "slkd") else None, device=dev, progress=False)
                run = {"regime": regime, "recipe": recipes[regime], "variant": v, "seed": seed,
                       "acc": res.accs[0], "final_loss": res.runs[0].final_loss,
                       "train_images_per_s": res.runs[0].images_per_s, "train_seconds": res.runs[0].seconds,
                       "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                       "plan": {"iterations": res.plan.iterations, "batch_size": res.plan.batch_size,
                                "epochs": res.plan.epochs}, "eval_config": to_dict(cfg)}
                state["runs"].append(run)
                print(f"{regime:5s} {v:13s} seed {seed}: acc {100 * run['acc']:.2f}  "
                      f"{run['train_images_per_s']:.0f} img/s  {run['cpu_seconds']:.0f} CPU s", flush=True)
                summarize(state)
                atomic_write_bytes(out, json.dumps(state, indent=1, default=str).encode())
    return 0


def expert_teacher(buffer: Path, train):
    """A Teacher from the final checkpoint of expert 0 in a ddkit expert buffer (flat parameter vectors)."""
    from safetensors.torch import load_file

    from ddkit.models import create_model
    from ddkit.teachers import Teacher

    meta = json.loads((buffer / "buffer.json").read_text())
    flat = load_file(str(buffer / "expert_0000.safetensors"))["trajectory"][-1]
    model = create_model(meta["arch"], num_classes=len(meta["classes"]), image_size=meta["image_size"])
    params = dict(model.named_parameters())
    off = 0
    with torch.no_grad():
        for name, shape in meta["params"]:
            n = int(torch.Size(shape).numel())
            params[name].copy_(flat[off:off + n].view(shape))
            off += n
    assert off == flat.numel(), "expert vector does not match the architecture"
    norm = meta["normalisation"]
    return Teacher(model.eval(), meta["arch"], list(meta["classes"]), norm["mean"], norm["std"],
                   image_size=meta["image_size"])


def summarize(state: dict) -> None:
    """Per (regime, variant): accuracy mean ± std over seeds, and the mean of the per-seed speed ratios."""
    summ: dict = {}
    for r in state["runs"]:
        summ.setdefault(r["regime"], {}).setdefault(r["variant"], []).append(r)
    out: dict = {}
    for regime, per in summ.items():
        out[regime] = {}
        for v, runs in per.items():
            accs = [r["acc"] for r in runs]
            row = {"accs": accs, "seeds": [r["seed"] for r in runs], "mean": statistics.fmean(accs),
                   "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0}
            base = {r["seed"]: r for r in per.get("fp32", [])}
            ratios = [r["train_images_per_s"] / base[r["seed"]]["train_images_per_s"] for r in runs if r["seed"] in base]
            cratios = [base[r["seed"]]["cpu_seconds"] / r["cpu_seconds"] for r in runs if r["seed"] in base]
            if ratios:
                row["train_speed_ratio_to_fp32_per_seed"] = ratios
                row["whole_run_cpu_time_ratio_fp32_over_this"] = cratios
            out[regime][v] = row
    state["summary"] = out


if __name__ == "__main__":
    raise SystemExit(main())
