"""The result row of the DATM parity pair (bench/parity/datm_pair.py; issue #27): write_row folds the finished
steps into bench/results/parity_datm.json (key ipc<k>): both judges on both sets (common.fold_judges), each set's
declared native protocol, learned lr and learned-label facts, the threshold-gated iterations, losses, memory,
speeds (speed_facts: the `speed` step's same-load window where it ran), the commands, and the official code's
changes in words (EDITS). Nothing of the official code is here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PEERS, draw_fold, fold_judges, judge_file, lscpu, read_json, save_row, written  # noqa: E402
from datm_grad import COMMIT, PEER, REPO  # noqa: E402
from datm_pair import (TO_DDKIT, ddkit_argv, official_cfg, official_inputs, opts, speed_dir,  # noqa: E402
                       workdir, yaml_path)
from mtt_setup import official_buffer  # noqa: E402


def both_running(off: Sequence[Sequence[float]], dd: Sequence[Sequence[float]]) -> Optional[Dict[str, Any]]:
    """Seconds/iteration of two runs that were started together, over the iterations each ran ENTIRELY while
    both were iterating: the window from the later of the two first stamps to the earlier of the two last ones
    (stamps [iteration, monotonic seconds], one clock for both processes); an interval between consecutive stamps
    of a side counts when it lies inside the window. None when a side has no such interval. Why: a side that
    finishes first leaves the other alone on the cores for its last iterations, which the plain per-side average
    (per_it) would count as the same load."""
    lo, hi = max(off[0][1], dd[0][1]), min(off[-1][1], dd[-1][1])
    out: Dict[str, Any] = {"window_s": round(hi - lo, 1)}
    for side, st in (("official", off), ("ddkit", dd)):
        d = [b[1] - a[1] for a, b in zip(st, st[1:]) if a[1] >= lo and b[1] <= hi]
        if not d:
            return None
        out[side] = {"s_per_iteration": round(sum(d) / len(d), 3), "iterations": len(d)}
    return out


def learned_label_facts(w: Path, side: str) -> Dict[str, Any]:
    """How far a set's learned labels moved from its classes: the share whose argmax is still the class, and
    the mean max-softmax (confidence)."""
    import torch

    _, labels, _ = official_inputs(w, side)
    hard = torch.arange(labels.shape[1]).repeat_interleave(len(labels) // labels.shape[1])
    p = labels.softmax(1)
    return {"argmax_is_class": round(float((labels.argmax(1) == hard).float().mean()), 4),
            "mean_max_softmax": round(float(p.max(1).values.mean()), 4)}


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
    both = both_running(o["stamps"], d["stamps"]) if o.get("stamps") and d.get("stamps") else None
    out = seq
    if both:
        so, sd = both["official"]["s_per_iteration"], both["ddkit"]["s_per_iteration"]
        out = {"official_s_per_iteration": so, "ddkit_s_per_iteration": sd, "ddkit_over_official": round(sd / so, 3),
               "how": f"`datm_pair.py speed`: both distillations started at the same time, one thread each, "
                      f"{a.speed_iterations} iterations of the pair's settings (sets not judged); seconds per "
                      f"iteration over the iterations each side ran entirely while both were iterating "
                      f"(datm_row.both_running: official {both['official']['iterations']}, ddkit "
                      f"{both['ddkit']['iterations']} iterations in a {both['window_s']} s window; time stamps: the "
                      f"official wandb.log('Progress') calls, ddkit's LossLog.step)",
               "speed_run_plain_average": facts(o, d), "sequential": seq}
    return {**out, **({"partial": "; ".join(missing)} if missing else {})}


def draws(w: Path) -> Dict[str, Any]:
    """`diagnostics.draws` where the extra distillation draws were judged (`datm_pair.py draws`), else {}."""
    d = draw_fold(w, "ddkit judge, student seed 0, one accuracy per distillation draw (the row's set first; draw K "
                     "runs the official DATM.py seeded K (Python/numpy/torch before the run, and its own "
                     "manual_seed(K) at its wandb.init, since its main seeds 0 itself: EDITS (5)) and ddkit with "
                     "--seed K: other start images, experts, start epochs, minibatches and DSA draws); the pass rule "
                     "of issue #27 on these: the set-level spread is inside the tolerance")
    return {"diagnostics": {"draws": d}} if "verdict" in d else {}


def write_row(a: argparse.Namespace) -> None:
    """Fold the finished steps into bench/results/parity_datm.json (key ipc<k>); a partial row says what is missing."""
    from ddkit.distilled import load_distilled

    w = workdir(a)
    t_off, t_dd = read_json(w / "official" / "timing.json"), read_json(w / "ddkit_timing.json")
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
           "judges": judges, **({"missing": missing} if missing else {}), **draws(w),
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
         "/work/peers/pydeps) on the path; (5) Python's random, numpy and torch seeded with the draw K before the run "
         "(0: the row's sets; `datm_pair.py draws` runs K = 1, 2, ...). DATM.py's main calls its own manual_seed() "
         "first, with its default 0, so seeding from outside alone would not vary a draw: the wandb stub's init "
         "(which main calls after that with only get_dataset between, which draws nothing) calls DATM.py's own "
         "manual_seed(K) again, so the run's random/numpy/torch streams start as if main's "
         "call had used K instead of 0 (for the row's draw 0 the same seed 0 again, a no-op); its get_network "
         "still reseeds torch from the clock at every network it builds. Expert "
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


