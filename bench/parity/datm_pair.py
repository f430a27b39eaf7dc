"""Parity pair for DATM (NUS-HPC-AI-Lab/DATM @ 97ae510) against ddkit's `datm` (issue #27).

    python bench/parity/datm_pair.py all --buffer BUF --runs RUNS [--lock LOCK]  # defaults: the committed row

The MTT pair's hand-over (mtt_pair.py / mtt_setup.py) with DATM's learned soft labels on top: ONE expert
buffer for both sides (ddkit's, converted to the official replay_buffer_0.pt by mtt_pair.convert), one ZCA
space (the official get_dataset is handed the experts' 1000 images as its train split), the official settings
read from DATM's own configs/CIFAR-10/ConvIN/IPC<k>.yaml with the reductions of the command line (settings()),
and both sides' settings built from ONE official config dict (official_cfg -> ddkit_argv). Steps, each skipped
when its output exists: convert, official-distill and ddkit-distill (under `flock LOCK` with --lock), to-ddkit,
the judge runs (one student seed each: ddkit `evaluate --protocol native`; the official distill/evaluation.py
on the set's learned labels and learned lr), row (bench/results/parity_datm.json). bench/parity/README.md says
them in full. Nothing of the official code is here: it runs from /work/peers/DATM, changed only from outside
(EDITS).
"""
from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mtt_setup  # noqa: E402
from common import (CACHE, DATA, PEERS, fold_judges, judge_file, load_split, lscpu, official_repo,  # noqa: E402
                    read_json, run_pool, save_row, write_json, written)
from datm_grad import COMMIT, PEER, REPO, config  # noqa: E402
from mtt_setup import PY, STRATEGY, SubsetCIFAR10, expert_subset, official_buffer  # noqa: E402

#: the options that may shrink from the YAML (argparse attribute -> the official config key); every other
#: official value is the YAML's (or, where it leaves one out, utils/cfg.py's default) on both sides
REDUCIBLE = {"iterations": "Iteration", "syn_steps": "syn_steps", "batch_syn": "batch_syn",
             "current_max_start_epoch": "current_max_start_epoch", "max_start_epoch": "max_start_epoch",
             "expansion_end_epoch": "expansion_end_epoch"}
FROM_YAML = ("expert_epochs", "lr_img", "lr_lr", "lr_y", "threshold")
#: values datm_grad.config fixes; settings() checks the YAML agrees with them
FIXED = {"lr_teacher": 0.01, "Momentum_y": 0.9, "min_start_epoch": 0, "zca": True,
         "pix_init": "samples_predicted_correctly"}
#: official config key -> ddkit `distill --method datm` flag (value written the same way)
TO_DDKIT = {"Iteration": "iterations", "syn_steps": "syn-steps", "expert_epochs": "expert-epochs",
            "max_start_epoch": "max-start-epoch", "current_max_start_epoch": "current-max-start-epoch",
            "expansion_end_epoch": "expansion-end-epoch", "min_start_epoch": "min-start-epoch",
            "Sequential_Generation": "sequential-generation", "batch_syn": "batch-syn", "zca": "zca",
            "lr_img": "lr-img", "lr_lr": "lr-lr", "lr_y": "lr-y", "Momentum_y": "momentum-y", "threshold": "threshold",
            "lr_teacher": "lr-teacher", "dsa_strategy": "dsa-strategy"}
KEEP = ("Grand_Loss", "Synthetic_LR", "Start_Epoch", "falts")  # what DATM.py logs per iteration ('falts': gated)


def yaml_path(ipc: int) -> Path:
    return PEERS / PEER / "configs" / "CIFAR-10" / "ConvIN" / f"IPC{ipc}.yaml"


def settings(a: argparse.Namespace, yaml_file: Optional[Path] = None) -> Dict[str, Dict[str, Any]]:
    """Fill `a` from DATM's YAML: FROM_YAML always, a REDUCIBLE option left None takes the YAML's value
    (expansion_end_epoch 0 = the run's iterations, so the start-epoch bound still grows over the run). Returns
    {key: {"yaml": v, "run": v}} for the reduced keys. Refuses a YAML whose values differ from FIXED."""
    import yaml

    y = yaml.safe_load((yaml_file or yaml_path(a.ipc)).read_text())
    bad = {k: y[k] for k, v in FIXED.items() if k in y and y[k] != v}
    if bad:
        raise SystemExit(f"{yaml_file or yaml_path(a.ipc)}: {bad} differ from the values datm_grad.config fixes")
    for k in FROM_YAML:
        setattr(a, k, y[k])
    if not a.expansion_end_epoch:
        a.expansion_end_epoch = a.iterations
    reduced = {}
    for attr, key in REDUCIBLE.items():
        if getattr(a, attr) is None:
            setattr(a, attr, y[key])
        elif getattr(a, attr) != y[key]:
            reduced[key] = {"yaml": y[key], "run": getattr(a, attr)}
    return reduced


def workdir(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"datm_ipc{a.ipc}_it{a.iterations}_n{a.syn_steps}_bs{a.batch_syn}"


def official_cfg(a: argparse.Namespace) -> Dict[str, Any]:
    """The --cfg YAML of DATM.py: datm_grad.config with DSA in the unroll, its strategy and batch_train said."""
    return {**config(a, str(official_buffer(a).resolve()), no_aug=False), "dsa": True, "dsa_strategy": STRATEGY,
            "batch_train": 128}


def ddkit_argv(a: argparse.Namespace) -> List[str]:
    """`ddkit distill --method datm` with every value of the official config (TO_DDKIT), nothing else chosen."""
    cfg = official_cfg(a)
    flags = [x for k, f in TO_DDKIT.items()
             for x in (f"--{f}", str(cfg[k]).lower() if isinstance(cfg[k], bool) else str(cfg[k]))]
    init = {"samples_predicted_correctly": "correct", "real": "real"}[cfg["pix_init"]]
    return ["distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress", "--method",
            "datm", "--buffer", a.buffer, "--ipc", str(a.ipc), "--seed", "0", "--init", init, *flags,
            "--output", str(workdir(a) / "ddkit_set"), "--overwrite"]


def opts(a: argparse.Namespace) -> List[str]:
    keys = ("ipc", "iterations", "syn_steps", "batch_syn", "current_max_start_epoch", "max_start_epoch",
            "expansion_end_epoch", "seeds", "eval_epochs", "buffer", "runs")
    return [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in keys]


def official_distill(a: argparse.Namespace) -> None:
    import yaml

    from mtt_pair import run_official

    out = workdir(a) / "official"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.yaml").write_text(yaml.safe_dump(official_cfg(a)))
    run_official(out, "distill/DATM.py", ["DATM.py", "--cfg", str((out / "cfg.yaml").resolve())], PEER, KEEP)


def ddkit_distill(a: argparse.Namespace) -> None:
    from mtt_pair import run_ddkit

    run_ddkit(ddkit_argv(a), workdir(a))


def to_ddkit(a: argparse.Namespace) -> None:
    """The official final set as a ddkit set: pixels = the buffer's ZCA inverted, its learned label logits as
    soft['learned'], its syn_lr as the learned lr, native protocol `datm` (what ddkit's own datm set declares)."""
    import torch

    from ddkit.distilled import DistilledSet

    final = torch.load(workdir(a) / "official" / "final.pt", weights_only=True)
    _, zca = expert_subset()
    test = load_split("test")
    hard = torch.arange(10).repeat_interleave(a.ipc)  # DATM.py's label_syn before it becomes logits
    meta = {"method": "official-datm", "ipc": a.ipc, "native": "datm", "learned_lr": final["syn_lr"],
            "learned_labels": "learned", "parity": {"repo": f"{REPO}@{COMMIT[:7]}", "cfg": official_cfg(a)}}
    DistilledSet(zca.invert(final["image_syn"].float()), hard, list(test.classes), test.mean, test.std,
                 {"learned": final["label_syn"].float()}, meta, zca=zca).save(workdir(a) / "official_set",
                                                                              overwrite=True, pngs=False)


def official_inputs(w: Path, side: str) -> Tuple[Any, Any, Any]:
    """What evaluation.py loads for a set (--data_dir, --label_dir, --lr_dir): its images in the ZCA space it was
    distilled in, its learned label logits, its learned lr. Official: DATM.py's final tensors as they are; ddkit:
    its set's pixels through the set's own ZCA (the buffer's), soft[learned_labels], learned_lr."""
    import torch

    from ddkit.distilled import load_distilled

    if side == "official":
        final = torch.load(w / "official" / "final.pt", weights_only=True)
        return final["image_syn"].float(), final["label_syn"].float(), torch.tensor(float(final["syn_lr"]))
    ds = load_distilled(w / f"{side}_set")
    if ds.zca is None or ds.learned_labels is None or ds.learned_lr is None:
        raise SystemExit(f"{w / f'{side}_set'}: no ZCA, learned labels or learned lr, not a DATM set")
    return ds.zca.apply(ds.images.float()), ds.soft[ds.learned_labels].float(), torch.tensor(float(ds.learned_lr))


def judge_official(a: argparse.Namespace, side: str, seed: int) -> None:
    """DATM's distill/evaluation.py as __main__ on the set (its own argparse; SoftCrossEntropy on the learned
    labels, the learned lr, DSA, batch 128), its evaluate_synset wrapped to seed torch's RNG with the student
    seed after its clock-seeded get_network and to keep the returned accuracy."""
    import torch
    import torchvision.datasets

    w = workdir(a)
    out = judge_file(w, "official", side, seed)
    inp = w / "official_judge_in" / side
    inp.mkdir(parents=True, exist_ok=True)
    for name, t in zip(("images", "labels", "lr"), official_inputs(w, side)):
        torch.save(t, inp / f"{name}.pt")
    argv = ["evaluation.py", "--dataset", "CIFAR10", "--zca", "--epoch_eval_train", str(a.eval_epochs),
            "--parall_eva", "True", "--data_path", "data", "--data_dir", str(inp / "images.pt"),
            "--label_dir", str(inp / "labels.pt"), "--lr_dir", str(inp / "lr.pt")]
    got: Dict[str, Any] = {}
    with official_repo(PEER) as repo:
        torchvision.datasets.CIFAR10 = SubsetCIFAR10
        import utils.utils_baseline as ub

        real = ub.evaluate_synset

        def kept(it_eval: int, net: Any, images: Any, labels: Any, testloader: Any, args: Any, **k: Any) -> Any:
            sub, zca = expert_subset()
            x = sub.images[:500].float() / 255
            with torch.no_grad():
                got["kornia_vs_ddkit_zca_max_abs"] = float((args.zca_trans(x) - zca.apply(x)).abs().max())
            got.update(lr_net=float(args.lr_net), batch_train=args.batch_train, dsa=args.dsa,
                       train_criterion=getattr(k.get("train_criterion"), "__name__", None),
                       soft_labels=list(labels.shape))
            torch.manual_seed(seed)  # shuffling and DSA draws follow the seed; the init is the clock's, as officially
            t0 = time.monotonic()
            res = real(it_eval, net, images, labels, testloader, args, **k)
            got.update(acc=round(100 * float(res[2]), 2), seconds=round(time.monotonic() - t0, 1))
            return res

        ub.evaluate_synset, saved = kept, sys.argv
        sys.argv = argv
        try:
            runpy.run_path(str(repo / "distill" / "evaluation.py"), run_name="__main__")
        finally:
            ub.evaluate_synset, sys.argv = real, saved
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"seed": seed, "epochs": a.eval_epochs, "argv": argv, **got})


def judge_ddkit(a: argparse.Namespace, side: str, seed: int) -> None:
    from mtt_pair import judge_ddkit as judge

    judge(a, side, seed, workdir(a))


def run_all(a: argparse.Namespace) -> None:
    """Every step not done yet: the distillations one after the other (under `flock --lock`), judges as --workers."""
    w = workdir(a)
    w.mkdir(parents=True, exist_ok=True)
    base = [PY, __file__] + opts(a)
    if not (official_buffer(a) / "convert.json").is_file():
        subprocess.run(base + ["convert"], check=True)
    locked = (["flock", a.lock] if a.lock else []) + base
    for step, done in (("official-distill", w / "official" / "timing.json"),
                       ("ddkit-distill", w / "ddkit_timing.json")):
        if not done.is_file():
            subprocess.run(locked + [step], check=True)
    if not (w / "official_set" / "meta.json").is_file():
        subprocess.run(base + ["to-ddkit"], check=True)
    run_pool(base, [[f"judge-{j}", side, "--seed", str(s)] for s in range(a.seeds) for j in ("ddkit", "official")
                    for side in ("official", "ddkit") if not judge_file(w, j, side, s).is_file()], a.workers)
    write_row(a)


def learned_label_facts(w: Path, side: str) -> Dict[str, Any]:
    """How far a set's learned labels moved from its classes: the share whose argmax is still the class, and
    the mean max-softmax (confidence)."""
    import torch

    _, labels, _ = official_inputs(w, side)
    hard = torch.arange(labels.shape[1]).repeat_interleave(len(labels) // labels.shape[1])
    p = labels.softmax(1)
    return {"argmax_is_class": round(float((labels.argmax(1) == hard).float().mean()), 4),
            "mean_max_softmax": round(float(p.max(1).values.mean()), 4)}


def speed_dir(a: argparse.Namespace) -> Path:
    """Work folder of the `speed` step: the same settings, --speed-iterations iterations, under <pair>/speed."""
    return workdir(argparse.Namespace(**{**vars(a), "iterations": a.speed_iterations, "runs": workdir(a) / "speed"}))


def speed_check(a: argparse.Namespace) -> None:
    """Both distillations AT THE SAME TIME (same machine, same load, one thread each), --speed-iterations of the
    pair's settings, for seconds/iteration only (the sets are not judged). Run it under the memory lock."""
    b = argparse.Namespace(**{**vars(a), "iterations": a.speed_iterations, "runs": str(workdir(a) / "speed")})
    base = [PY, __file__] + opts(b)
    if not (official_buffer(b) / "convert.json").is_file():
        subprocess.run(base + ["convert"], check=True)
    w = speed_dir(a)
    run_pool(base, [[t] for t, f in (("official-distill", w / "official" / "timing.json"),
                                     ("ddkit-distill", w / "ddkit_timing.json")) if not f.is_file()], 2)


def speed_facts(a: argparse.Namespace, t_off: Dict[str, Any], t_dd: Dict[str, Any],
                missing: List[str]) -> Dict[str, Any]:
    """Seconds/iteration of both sides: from the `speed` step (both at once) where it ran, else the pair's own
    distillations (one after the other, under whatever load each met), which are kept under `sequential`."""
    def facts(o: Dict[str, Any], d: Dict[str, Any]) -> Dict[str, Any]:
        so, sd = o.get("s_per_iteration"), d.get("s_per_iteration")
        return {"official_s_per_iteration": so, "ddkit_s_per_iteration": sd,
                "ddkit_over_official": round(sd / so, 3) if so and sd else None,
                "official_loadavg_at_end": (o.get("machine") or {}).get("loadavg"),
                "ddkit_loadavg_at_end": (d.get("machine") or {}).get("loadavg")}

    how = ("seconds between the time stamps of iteration 1 and the end, per iteration (official: its "
           "wandb.log('Progress') calls; ddkit: LossLog.step), one thread each")
    seq = {**facts(t_off, t_dd), "how": "the pair's two distillations one after the other, each under the shared "
                                        "memory lock, under the load each met; " + how}
    o, d = read_json(speed_dir(a) / "official" / "timing.json"), read_json(speed_dir(a) / "ddkit_timing.json")
    out = seq
    if o.get("s_per_iteration") and d.get("s_per_iteration"):
        out = {**facts(o, d), "how": f"`datm_pair.py speed`: both distillations at the same time (same load), "
                                     f"{a.speed_iterations} iterations of the pair's settings, sets not judged; " + how,
               "sequential": seq}
    return {**out, **({"partial": "; ".join(missing)} if missing else {})}


def write_row(a: argparse.Namespace) -> None:
    """Fold the finished steps into bench/results/parity_datm.json (key ipc<k>); a partial row says what is missing."""
    from ddkit.distilled import load_distilled

    w = workdir(a)
    t_off, t_dd = read_json(w / "official" / "timing.json"), read_json(w / "ddkit_timing.json")
    s_off, s_dd = t_off.get("s_per_iteration"), t_dd.get("s_per_iteration")
    cfg = official_cfg(a)
    sides = [s for s in ("official", "ddkit") if (w / f"{s}_set" / "meta.json").is_file()]
    meta = {s: load_distilled(w / f"{s}_set").meta for s in sides}
    ev = read_json(judge_file(w, "official", "ddkit", 0)) or read_json(judge_file(w, "official", "official", 0))
    judges = fold_judges(w, a.seeds)
    missing = [f"{j} judge on the {s} set ({len(judges.get(j, {}).get(s, {}).get('per_seed', []))}/{a.seeds})"
               for j in ("ddkit", "official") for s in ("official", "ddkit")
               if len(judges.get(j, {}).get(s, {}).get("per_seed", [])) < a.seeds]
    red = ", ".join(f"{k} {v['run']} (YAML {v['yaml']})" for k, v in a.reduced.items())
    row = {"settings": {"ipc": a.ipc, "iterations": a.iterations, **{k: cfg[k] for k in TO_DDKIT if k != "Iteration"},
                        "pix_init": cfg["pix_init"], "yaml": str(yaml_path(a.ipc).relative_to(PEERS / PEER)),
                        "reduced": a.reduced, "experts": 3, "expert_epochs_trained": 12,
                        "expert_images_per_class": 100, "expert_batch": 16, "seeds": a.seeds,
                        "eval_epochs": a.eval_epochs,
                        "text": f"IPC {a.ipc}, DATM's CIFAR-10 IPC-{a.ipc} YAML but {red}; {a.iterations} it (+1: "
                                f"inclusive range), N {a.syn_steps}, M {a.expert_epochs}, ZCA, lr_img {a.lr_img}, lr_y "
                                f"{a.lr_y}, threshold {a.threshold}, learned soft labels; 3 shared experts x 12 ep on "
                                f"100 img/class (batch 16); judges {a.eval_epochs} ep on the learned labels and lr, "
                                f"{a.seeds} seeds"},
           "command": " ".join(["python", "bench/parity/datm_pair.py", "all"] + opts(a)),
           "official_argv": ["DATM.py", "--cfg", "<cfg.yaml: settings above>"], "official_cfg": cfg,
           "ddkit_command": " ".join(["ddkit"] + ddkit_argv(a)),
           "judge_command": " ".join(["evaluation.py"] + ev.get("argv", ["(not run yet)"])[1:]),
           "buffer_conversion": read_json(official_buffer(a) / "convert.json"),
           "native_declared": {s: meta[s].get("native") for s in sides},
           "learned_syn_lr": {"official": t_off.get("final_syn_lr"), "ddkit": t_dd.get("syn_lr")},
           "learned_labels": {s: learned_label_facts(w, s) for s in sides},
           "gated_iterations": {"official": len(t_off.get("falts", [])) if t_off else None,
                                "ddkit": meta.get("ddkit", {}).get("skipped_iterations")},
           "loss_per_iteration": {"official": t_off.get("Grand_Loss"),
                                  "ddkit": [v for _, v in meta.get("ddkit", {}).get("loss_curve", [])]},
           "official_start_epochs": t_off.get("Start_Epoch"),
           "peak_memory_mb": {"official": t_off.get("peak_rss_mb"), "ddkit": t_dd.get("peak_rss_mb")},
           **({"ddkit_allocator": t_dd["allocator"]} if t_dd.get("allocator") else {}),
           "kornia_vs_ddkit_zca_max_abs": ev.get("kornia_vs_ddkit_zca_max_abs"),
           "official_judge_facts": {k: ev.get(k) for k in ("lr_net", "batch_train", "dsa", "train_criterion",
                                                            "soft_labels")},
           "judges": judges, **({"missing": missing} if missing else {}),
           "speed": speed_facts(a, t_off, t_dd, missing if not judges else []),
           "machine": t_off.get("machine") or lscpu(), **written()}
    save_row("datm", {"repo": REPO, "commit": COMMIT}, EDITS, JUDGES, f"ipc{a.ipc}", row)


EDITS = ("None to the official files. The driver runs distill/DATM.py as __main__ (runpy) from the pinned checkout "
         "with a --cfg YAML of ours (its configs/CIFAR-10/ConvIN/IPC10.yaml values but the reduced ones the row "
         "names; num_eval 0 and skip_first_eva, so its in-loop evaluation is skipped and the judges below evaluate "
         "the final set; parall_eva True so its samples_predicted_correctly init and label init run on the CPU "
         "device instead of cuda:0) and these changes from outside, as for MTT (mtt_pair.run_official): (1) "
         "`wandb` is a stub module: init keeps the args DATM.py rebuilds itself from, log records the per-iteration "
         "time stamps and Grand_Loss, Synthetic_LR, Start_Epoch and falts (the threshold-gated iterations), finish "
         "reads the final image_syn, syn_lr and label_syn (the learned label logits) from main's frame; (2) "
         "torch.Tensor.cuda is the identity (DATM.py calls it only when it saves at evaluation iterations: none "
         "here); (3) torchvision.datasets.CIFAR10 serves ddkit's uint8 decode of CIFAR-10 (JPEG q75) with its "
         "train split cut to the experts' 100-per-class subset, so its kornia ZCAWhitening(eps=0.1) is fitted on "
         "the images the shared expert buffer was trained and whitened with, and its correct-sample init draws "
         "from those 1000 images (ddkit's from the whole split); (4) kornia 0.9.0 and yacs 0.1.8 (pip --target "
         "/work/peers/pydeps) on the path; (5) Python's random, numpy and torch seeded with 0 before the run "
         "(DATM.py seeds 0 itself too; its get_network reseeds torch from the clock every iteration). Expert "
         "buffer: ddkit's, converted to replay_buffer_0.pt by mtt_pair.py convert (same parameter order; logits "
         "checked equal). Official judge: distill/evaluation.py as __main__ with its own argparse (--zca "
         "--parall_eva True --epoch_eval_train E and the set's images/labels/lr files), CIFAR-10 handed over as "
         "above, and its evaluate_synset wrapped to seed torch with the student seed before training and to keep "
         "the returned accuracy.")
JUDGES = {"ddkit": "ddkit evaluate --protocol native (both sets declare 'datm': recipe datm, soft cross-entropy "
                   "(T=1) on the set's learned label logits, the set's learned lr, SGD momentum 0.9 wd 5e-4, x0.1 at "
                   "E/2+1, DSA, batch 128, inputs and test split whitened with the set's ZCA; --epochs as the row "
                   "says)",
          "official": f"distill/evaluation.py of {REPO}@{COMMIT[:7]}: evaluate_synset with its SoftCrossEntropy on "
                      "the set's learned label logits, lr_net = the set's learned syn_lr, SGD momentum 0.9 wd 5e-4, "
                      "x0.1 at epoch E//2+1, batch 128, per-sample DSA, test split whitened by its get_dataset "
                      "(kornia ZCA fitted on the experts' subset); the official set as DATM.py left it (ZCA space), "
                      "ddkit's set through its own ZCA (the buffer's); network init from the clock (its "
                      "get_network), shuffling/DSA seeded by the driver"}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("all", "convert", "official-distill", "ddkit-distill", "to-ddkit",
                                     "judge-ddkit", "judge-official", "row", "speed"))
    ap.add_argument("sides", nargs="*", help="judge steps: official and/or ddkit")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=6, help="both sides (YAML 10000); inclusive range, N + 1")
    ap.add_argument("--syn-steps", type=int, default=None, help="student steps (default: the YAML's, 80)")
    ap.add_argument("--batch-syn", type=int, default=10, help="synthetic images per student step (YAML 100, all)")
    ap.add_argument("--current-max-start-epoch", type=int, default=5, help="YAML 10 (half its max)")
    ap.add_argument("--max-start-epoch", type=int, default=10, help="YAML 20; the buffer needs this + 2 epochs")
    ap.add_argument("--expansion-end-epoch", type=int, default=0, help="YAML 1000 (0: --iterations)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="judge steps: the student seed")
    ap.add_argument("--eval-epochs", type=int, default=60, help="both judges (DATM's: 1000)")
    ap.add_argument("--buffer", default="/work/runs/h27m/buffer_b16", help="ddkit expert buffer (mtt_pair.py's)")
    ap.add_argument("--runs", default="/work/runs/parity")
    ap.add_argument("--lock", default="", help="run each distillation under `flock LOCK` (shared-memory machines)")
    ap.add_argument("--workers", type=int, default=2, help="judge runs at a time")
    ap.add_argument("--speed-iterations", type=int, default=3, help="the speed step's iterations (both sides at once)")
    a = ap.parse_args(argv)
    a.reduced = settings(a)
    mtt_setup.ARGS = a  # the data hand-over (SubsetCIFAR10, expert_subset) reads the buffer from it
    if a.step == "convert":
        from mtt_pair import convert

        convert(a)
        return
    steps = {"all": run_all, "official-distill": official_distill, "ddkit-distill": ddkit_distill,
             "to-ddkit": to_ddkit, "row": write_row, "speed": speed_check}
    if a.step in steps:
        steps[a.step](a)
    else:
        for side in a.sides:
            (judge_ddkit if a.step == "judge-ddkit" else judge_official)(a, side, a.seed)


if __name__ == "__main__":
    main()
