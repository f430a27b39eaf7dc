"""Parity pair for DATM (NUS-HPC-AI-Lab/DATM @ 97ae510) against ddkit's `datm` (issue #27).

    python bench/parity/datm_pair.py all --buffer BUF --runs RUNS [--lock LOCK]  # defaults: the committed row

The MTT pair's hand-over (mtt_pair.py / mtt_setup.py) with DATM's learned soft labels on top: ONE expert
buffer for both sides (ddkit's, converted to the official replay_buffer_0.pt by mtt_pair.convert), one ZCA
space (the official get_dataset is handed the experts' 1000 images as its train split), the official settings
read from DATM's own configs/CIFAR-10/ConvIN/IPC<k>.yaml with the reductions of the command line (settings()),
and both sides' settings built from ONE official config dict (official_cfg -> ddkit_argv). Steps, each skipped
when its output exists: convert, official-distill and ddkit-distill (under common.exclusive(LOCK) with --lock),
to-ddkit, the judge runs (one student seed each: ddkit `evaluate --protocol native`; the official
distill/evaluation.py on the set's learned labels and learned lr), row (bench/results/parity_datm.json); `draws`
adds distillation draws 1 .. --draws-1 of both sides and their draw-level verdict (diagnostics.draws).
bench/parity/README.md says them in full. Nothing of the official code is here: it runs from /work/peers/DATM, changed only from outside
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
from common import (CACHE, DATA, PEERS, RESULTS, add_diagnostics, dispatch, draw_set, exclusive,  # noqa: E402
                    judge_file, load_split, official_repo, official_run_dir, run_draw_steps, run_pool, write_json)
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
    """`ddkit distill --method datm` with every value of the official config (TO_DDKIT), nothing else chosen;
    draw K (--draw) runs with --seed K into <workdir>/ddkit_seedK_set (the pair's own: --seed 0, ddkit_set)."""
    cfg = official_cfg(a)
    flags = [x for k, f in TO_DDKIT.items()
             for x in (f"--{f}", str(cfg[k]).lower() if isinstance(cfg[k], bool) else str(cfg[k]))]
    init = {"samples_predicted_correctly": "correct", "real": "real"}[cfg["pix_init"]]
    return ["distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress", "--method",
            "datm", "--buffer", a.buffer, "--ipc", str(a.ipc), "--seed", str(draw(a)), "--init", init, *flags,
            "--output", str(workdir(a) / f"{draw_set('ddkit', draw(a))}_set"), "--overwrite"]


def draw(a: argparse.Namespace) -> int:
    """The distillation draw of this step (--draw; 0: the pair's own sets)."""
    return getattr(a, "draw", 0)


def opts(a: argparse.Namespace) -> List[str]:
    keys = ("ipc", "iterations", "syn_steps", "batch_syn", "current_max_start_epoch", "max_start_epoch",
            "expansion_end_epoch", "seeds", "eval_epochs", "buffer", "runs")
    return [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in keys]


def official_distill(a: argparse.Namespace) -> None:
    """DATM.py on the official config, draw K (--draw) seeded K: from outside before the run, and DATM.py's own
    manual_seed called again with K at its wandb.init, since its main seeds 0 itself first (EDITS (5))."""
    import yaml

    from mtt_pair import run_official

    out = official_run_dir(workdir(a), draw(a))
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.yaml").write_text(yaml.safe_dump(official_cfg(a)))
    run_official(out, "distill/DATM.py", ["DATM.py", "--cfg", str((out / "cfg.yaml").resolve())], PEER, KEEP,
                 seed=draw(a), reseed=True)


def ddkit_distill(a: argparse.Namespace) -> None:
    from mtt_pair import run_ddkit

    run_ddkit(ddkit_argv(a), workdir(a), draw_set("ddkit", draw(a)))


def to_ddkit(a: argparse.Namespace) -> None:
    """The official final set as a ddkit set: pixels = the buffer's ZCA inverted, its learned label logits as
    soft['learned'], its syn_lr as the learned lr, native protocol `datm` (what ddkit's own datm set declares)."""
    import torch

    from ddkit.distilled import DistilledSet

    final = torch.load(official_run_dir(workdir(a), draw(a)) / "final.pt", weights_only=True)
    _, zca = expert_subset()
    test = load_split("test")
    hard = torch.arange(10).repeat_interleave(a.ipc)  # DATM.py's label_syn before it becomes logits
    meta = {"method": "official-datm", "ipc": a.ipc, "native": "datm", "learned_lr": final["syn_lr"],
            "learned_labels": "learned", "parity": {"repo": f"{REPO}@{COMMIT[:7]}", "cfg": official_cfg(a)}}
    DistilledSet(zca.invert(final["image_syn"].float()), hard, list(test.classes), test.mean, test.std,
                 {"learned": final["label_syn"].float()}, meta, zca=zca).save(
        workdir(a) / f"{draw_set('official', draw(a))}_set", overwrite=True, pngs=False)


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
    """Every step not done yet: the distillations one after the other (under exclusive(--lock)), judges as --workers."""
    w = workdir(a)
    w.mkdir(parents=True, exist_ok=True)
    base = [PY, __file__] + opts(a)
    if not (official_buffer(a) / "convert.json").is_file():
        subprocess.run(base + ["convert"], check=True)
    for step, done in (("official-distill", w / "official" / "timing.json"),
                       ("ddkit-distill", w / "ddkit_timing.json")):
        if not done.is_file():
            with exclusive(a.lock):
                subprocess.run(base + [step], check=True)
    if not (w / "official_set" / "meta.json").is_file():
        subprocess.run(base + ["to-ddkit"], check=True)
    run_pool(base, [[f"judge-{j}", side, "--seed", str(s)] for s in range(a.seeds) for j in ("ddkit", "official")
                    for side in ("official", "ddkit") if not judge_file(w, j, side, s).is_file()], a.workers)
    write_row(a)


def run_draws(a: argparse.Namespace) -> None:
    """Distillation draws 1 .. --draws-1 of both sides (the pair's own sets are draw 0): official-distill,
    to-ddkit and ddkit-distill of draw K (each distillation alone under --lock), each set judged by ddkit at student
    seed 0, then add_draws. Every finished step is kept (common.run_draw_steps), so a rerun resumes."""
    w = workdir(a)

    def steps(k: int) -> List[Tuple[str, Path, bool]]:
        return [("official-distill", official_run_dir(w, k) / "timing.json", True),
                ("to-ddkit", w / f"{draw_set('official', k)}_set" / "meta.json", False),
                ("ddkit-distill", w / f"{draw_set('ddkit', k)}_timing.json", True)]

    run_draw_steps([PY, __file__] + opts(a), w, range(1, a.draws), steps,
                   lambda k: [draw_set(s, k) for s in ("official", "ddkit")], a.lock)
    add_draws(a)


def add_draws(a: argparse.Namespace) -> None:
    """The draw-level verdict (datm_row.draws) into the existing row ipc<k> of bench/results/parity_datm.json,
    the rest of the row untouched; the file's edits text becomes EDITS (which says how draw K is seeded)."""
    from datm_row import EDITS, draws

    add_diagnostics(RESULTS / "parity_datm.json", f"ipc{a.ipc}", draws(workdir(a)).get("diagnostics", {}), EDITS)


def write_row(a: argparse.Namespace) -> None:
    from datm_row import write_row as write  # the row's own file (it reads this module's settings)

    write(a)


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


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("all", "convert", "official-distill", "ddkit-distill", "to-ddkit",
                                     "judge-ddkit", "judge-official", "row", "speed", "draws"))
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
    ap.add_argument("--lock", default=None, help="a file locked (flock) around each distillation (shared memory)")
    ap.add_argument("--draw", type=int, default=0, help="distill steps: the draw (0: the pair's own sets)")
    ap.add_argument("--draws", type=int, default=3, help="draws: draws per side in all, the pair's own included")
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
             "to-ddkit": to_ddkit, "row": write_row, "speed": speed_check, "draws": run_draws}
    dispatch(a, steps, {"judge-ddkit": judge_ddkit, "judge-official": judge_official})


if __name__ == "__main__":
    main()
