"""`ddkit` command line: parse, then call library functions — no logic lives here.

This file is the parser and entry point; what each command does is in cli_commands.py. Only the
chosen command's flags are built (SUBCOMMANDS), so `--help`, `--version` and the list commands
never import torch (they read the static name index, ddkit/names.py).

Stage flags are generated from the stage's frozen dataclass (`ddkit.config.add_dataclass_args`);
`-c config.yaml` only sets defaults; the resolved config is printed and saved next to the outputs.
User errors (DDKitError, unknown names, missing files, existing outputs) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ddkit import __version__
from ddkit.cli_commands import (EXIT_USAGE, cmd_dcs, cmd_demo, cmd_distill, cmd_evaluate, cmd_experts, cmd_export,
                                cmd_import, cmd_inspect, cmd_list, cmd_merge, cmd_relabel, cmd_study, cmd_teacher)


def _common(p: argparse.ArgumentParser, dataset: bool = True, dataset_default: Optional[str] = "digits") -> None:
    p.add_argument("-c", "--config", default=None, help="YAML file whose keys set flag defaults")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")
    if dataset:
        p.add_argument("--dataset", default=dataset_default,
                       help="dataset name (see `ddkit datasets`), folder:<path> or tar:<path> "
                            f"(default: {dataset_default or 'none'})")
        p.add_argument("--data-root", default=None, help="where the dataset files are (default: per dataset)")
        p.add_argument("--download", action="store_true", help="download torchvision datasets when missing (needs internet)")
        p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $DDKIT_CACHE or ~/.cache/ddkit)")
        p.add_argument("--classes", default=None, metavar="A,B,..",
                       help="keep only these classes, labelled in this order (default: all)")
        p.add_argument("--max-per-class", type=int, default=None, metavar="N",
                       help="quick trials: at most N train images per class, a class-balanced subset drawn with "
                            "seed 0 and recorded in the outputs; the test split stays whole (default: all)")
        p.add_argument("--image-size", type=int, default=None, metavar="PX",
                       help="side in pixels the images are loaded at (resize the short side, then centre-crop); "
                            "small sides make quick trials on the ImageNet family (default: the dataset's own, "
                            "224 for imagenet/imagenette/imagewoof)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _log_flags(p)


def _log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", default=None, metavar="KIND[,KIND]",
                   help="also write the per-epoch scalars to tensorboard, csv and/or wandb (offline)")
    p.add_argument("--log-dir", default=None, help="tracker folder (default: OUTPUT.logs for teacher/evaluate, "
                   "OUTPUT/logs for study/demo)")


def _feedback(args: argparse.Namespace) -> Any:
    """--log trackers and the one-line-per-epoch log for the commands that train: on the terminal for
    `teacher train` / `evaluate`, in OUTPUT/epochs.log for `study` / `demo` (hundreds of runs)."""
    import contextlib

    out = getattr(args, "output_dir", None) or getattr(args, "output", None)
    if args.command not in ("teacher", "evaluate", "study", "demo") or out is None:
        return contextlib.nullcontext()
    from ddkit.trackers import session

    many = args.command in ("study", "demo")
    return session(args.log, args.log_dir or (f"{out}/logs" if many else f"{out}.logs"),
                   console=not many and not args.no_progress, file=Path(out) / "epochs.log" if many else None)


def _method_from_argv(argv: Sequence[str]) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return None


def _build_teacher(t: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    from ddkit.config import add_dataclass_args
    from ddkit.teachers import TeacherConfig

    tsub = t.add_subparsers(dest="teacher_command", metavar="ACTION")
    tt = tsub.add_parser("train", help="train a teacher on the full train split and save safetensors + json")
    _common(tt)
    tt.add_argument("--model", dest="model_arch", default=None, help="architecture (alias of --arch; see `ddkit models`)")
    tt.add_argument("--output", required=True, help="checkpoint path without extension (writes .safetensors + .json)")
    tt.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    add_dataclass_args(tt, TeacherConfig, skip=("arch",))


def _build_experts(x: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    from ddkit.config import add_dataclass_args
    from ddkit.teachers.experts import ExpertConfig

    xt = x.add_subparsers(dest="experts_command", metavar="ACTION").add_parser(
        "train", help="train an expert buffer (one atomic file per expert; rerun the same command to resume)")
    _common(xt)
    xt.add_argument("--output", required=True, help="buffer folder; a folder made with other options is refused")
    xt.add_argument("--shard", default=None, help="i/n: train experts e with e %% n == i (torchrun: RANK/WORLD_SIZE)")
    add_dataclass_args(xt, ExpertConfig)


def _build_distill(d: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    from ddkit.config import add_dataclass_args
    from ddkit.methods import method_spec

    _common(d)
    d.add_argument("--method", default="random", help="condensation method (see `ddkit methods`; default: random)")
    d.add_argument("--teacher", action=_Repeated, default=None,
                   help="teacher checkpoint (see docs: ours, CIM/RDED .pth, SRe2L, DD-Ranking ckpt_best.pt, "
                        "torchvision:<name>); repeat it (--teacher A --teacher B) for the committee of a method "
                        "that recovers through several teachers (fadrm+, cvdd)")
    d.add_argument("--teacher-list", default=None, metavar="FILE",
                   help="the committee from a file: one checkpoint per line, optionally followed by its prior "
                        "accuracy (CV-DD's voter weights)")
    d.add_argument("--teacher-arch", default=None, help="architecture of --teacher when the file does not say")
    d.add_argument("--skip-teacher-check", action="store_true", help="skip the real-test-set sanity check of the teacher")
    d.add_argument("--output", required=True, help="output folder of the distilled set")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    d.add_argument("--shard", default=None, help="i/n: condense only classes c with c %% n == i into OUTPUT.parts/ "
                   "(SLURM arrays, separate shells); torchrun sets this from RANK/WORLD_SIZE")
    d.add_argument("--resume", action="store_true", help="skip classes already finished in OUTPUT.parts/")
    d.add_argument("--no-merge", action="store_true", help="leave OUTPUT.parts/ unmerged (merge with `ddkit merge`)")
    mname = _method_from_argv(argv)
    try:
        spec = method_spec(mname or "random")
    except KeyError:
        spec = method_spec("random")  # the unknown name is reported by main() with the list of methods
    add_dataclass_args(d, spec.config)


def _build_evaluate(e: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    from ddkit.config import add_dataclass_args
    from ddkit.evaluate import EvalConfig

    e.add_argument("distilled", help="distilled-set folder")
    _common(e)
    e.add_argument("--teacher", default=None, help="teacher checkpoint (needed for SL without stored labels and SL+KD)")
    e.add_argument("--teacher-arch", default=None, help="architecture of --teacher when the file does not say")
    e.add_argument("--output", required=True, help="output folder for metrics.jsonl, summary.json, results.md, report.html")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    e.add_argument("--no-random", action="store_true",
                   help="skip the random baseline: by default a random real subset of the set's IPC is evaluated "
                        "beside it (same recipe, regime, epochs, seeds, student) and gives the IOR column")
    e.add_argument("--with-random", action="store_true",
                   help="deprecated, the random baseline is now the default; kept so old scripts and configs run "
                        "(with it, a random subset that cannot be drawn is an error instead of a note)")
    e.add_argument("--students", default=None, help="comma-separated student models for a cross-architecture table")
    add_dataclass_args(e, EvalConfig)



def _build_relabel(rl: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    from ddkit.config import add_dataclass_args
    from ddkit.evaluate.stored import RelabelConfig

    from ddkit.teachers.committee import CommitteeConfig

    rl.add_argument("distilled", help="distilled-set folder")
    _common(rl, dataset=False)
    rl.add_argument("--teacher", action=_Repeated, default=None,
                    help="teacher checkpoint that labels the views; repeat it (--teacher A --teacher B) for a "
                         "committee whose logits combine by --vote (EDC, CV-DD, FADRM+, G-VBSM relabel)")
    rl.add_argument("--teacher-list", default=None, metavar="FILE",
                    help="committee from a file: one checkpoint per line, optionally followed by its prior accuracy")
    rl.add_argument("--teacher-arch", default=None, help="architecture of --teacher when the file does not say")
    add_dataclass_args(rl, RelabelConfig)
    add_dataclass_args(rl, CommitteeConfig)


class _Repeated(argparse.Action):
    """A repeatable flag whose values replace a `-c` file's list instead of extending it."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        mark = f"_{self.dest}_given"
        items = list(getattr(ns, self.dest) or []) if getattr(ns, mark, False) else []
        setattr(ns, self.dest, items + [values])
        setattr(ns, mark, True)


def _build_merge(mg: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    mg.add_argument("output", help="distilled-set folder to write (its parts are in OUTPUT.parts/)")
    mg.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    mg.add_argument("--no-pngs", action="store_true", help="skip the PNG view")


def _build_study(st: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    from ddkit.config import add_dataclass_args
    from ddkit.study import StudyConfig

    ssub = st.add_subparsers(dest="study_command", metavar="STUDY")
    ht = ssub.add_parser("hard-truths", help="the regime × budget grid of 'Hard truths about soft labels' "
                                             "(finished cells are skipped on rerun)")
    _common(ht)
    ht.add_argument("--teacher", default=None, help="teacher checkpoint (rded, ca2d, lic, SL and SL+KD need one)")
    ht.add_argument("--teacher-arch", default=None, help="architecture of --teacher when the file does not say")
    add_dataclass_args(ht, StudyConfig)
    ht.add_argument("--method-opt", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="a method option for every set of that method, e.g. el2n-easy.proxy_epochs=1 (repeatable; "
                         "part of the set's cache key)")
    ht.add_argument("--eval-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="an evaluator option for every cell, e.g. num_evals=1 (repeatable; pinned in study.json)")
    ht.add_argument("--exact", action="store_true", help="fp32 eager students (no bf16 autocast, no compile) "
                    "instead of the machine's fast default; same as --eval-opt exact=true, recorded in each cell's "
                    "options.json (cells made before the fast default resume with it)")
    from ddkit.cli_studies import build_study_parsers

    build_study_parsers(ssub, _common)  # cross-arch, efficiency, continual


def _build_dcs(dc: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    _common(dc)
    dc.add_argument("--teacher", default=None, help="teacher checkpoint (for teacher-feature losses)")
    dc.add_argument("--teacher-arch", default=None, help="architecture of --teacher when the file does not say")
    dc.add_argument("--loss", default="dm", help="distillation loss to score: dm, feature_mean or teacher_ce")
    dc.add_argument("--ipcs", default="10", help="comma-separated IPCs (subset size is fixed within each IPC)")
    dc.add_argument("--subsets", type=int, default=8, help="random class-balanced subsets per IPC")
    dc.add_argument("--seed", type=int, default=0, help="seed of the subsets and students")
    dc.add_argument("--budget-epochs", type=float, default=None, help="student compute in full-data epochs")
    dc.add_argument("--exact", action="store_true", help="fp32 eager students (no bf16 autocast, no compile) "
                    "instead of the machine's fast default")
    dc.add_argument("--output", default=None, help="write the markdown result here")


def _build_import(im: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    im.add_argument("source", help="an ImageFolder of PNG/JPEG (RDED 00000/, SRe2L new000/, …), a folder with "
                                   "images.pt + labels.pt (DD-Ranking/MTT/DC-Bench) or a .safetensors file")
    _common(im, dataset_default=None)
    im.add_argument("--format", default="auto", choices=("auto", "imagefolder", "ddranking", "safetensors"),
                    help="source format (default: auto, from the files present)")
    im.add_argument("--pixel-space", default=None, choices=("unit", "normalized"),
                    help="how the source's tensors are stored: [0,1] pixels or (x-mean)/std (default: normalized "
                         "for ddranking, as MTT/DATM/DC save them; unit otherwise)")
    im.add_argument("--pixel-scale", type=float, default=None, metavar="N",
                    help="unit pixels run 0..N, e.g. 255 for integer or 0–255 float tensors (default: 255 for "
                         "uint8 tensors, 1 otherwise)")
    im.add_argument("--method", default=None, help="name to record as the set's method, e.g. rded (default: "
                                                  "imported-<format>)")
    im.add_argument("--output", required=True, help="ddkit distilled-set folder to write")
    im.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _build_export(ex: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    ex.add_argument("distilled", help="ddkit distilled-set folder")
    ex.add_argument("--format", required=True, choices=("imagefolder", "ddranking", "safetensors"),
                    help="imagefolder: PNGs per class (lossy for optimised sets); ddranking: images.pt + labels.pt; "
                         "safetensors: one file, exact floats")
    ex.add_argument("--pixel-space", default=None, choices=("unit", "normalized"),
                    help="ddranking only: normalized (x-mean)/std as MTT/DATM/DC save them, or unit [0,1] pixels "
                         "(default: normalized)")
    ex.add_argument("--output", required=True, help="folder to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _build_inspect(i: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    i.add_argument("path", help="distilled-set folder")


def _build_demo(m: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    m.add_argument("--output", default="runs/demo", help="report folder (default: runs/demo)")
    m.add_argument("--all", action="store_true", help="every registered method (plugins' too) instead of the "
                   "representative default (random, herding, el2n-easy, cad-prune, rded, lic, sre2l, dm, datm); a "
                   "method whose needs the demo cannot provide is a 'skipped' row, a method that fails a 'failed' "
                   "row and exit code 2")
    m.add_argument("--methods", default=None, metavar="A,B", help="these methods instead of the default")
    m.add_argument("--device", default="auto", help="cpu, cuda or auto")
    m.add_argument("--exact", action="store_true", help="fp32 eager students (no bf16 autocast, no compile) "
                   "instead of the machine's fast default")
    m.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _log_flags(m)


Builder = Callable[[argparse.ArgumentParser, Sequence[str]], None]

# name -> (one-line help, flag builder or None). Only the chosen command's builder runs, so
# `ddkit --help` and the list commands never import torch; a builder may import what its flags
# come from (config dataclasses). To add a command: a `_build_x` here and a `cmd_x` in COMMANDS.
SUBCOMMANDS: Dict[str, Tuple[str, Optional[Builder]]] = {
    "datasets": ("list datasets and their facts", None),
    "models": ("list model names", None),
    "methods": ("list condensation methods", None),
    "recipes": ("list evaluation recipes", None),
    "teacher": ("train a teacher: `ddkit teacher train --dataset … --model … --output …`", _build_teacher),
    "experts": ("expert trajectories for mtt/datm: `ddkit experts train --dataset … --output BUF`",
                _build_experts),
    "distill": ("condense a dataset with a method (`ddkit distill --method lic --help` lists that method's "
                "options)", _build_distill),
    "evaluate": ("train students on a distilled set and report test accuracy (default --protocol native: each set "
                 "as its paper trains it; --protocol hard-truths: one protocol for every set)", _build_evaluate),
    "relabel": ("store teacher logits of E epochs of a recipe's views at SET/fkd (read by `ddkit evaluate SET "
                "--labels stored`)", _build_relabel),
    "merge": ("assemble OUTPUT from the per-class files in OUTPUT.parts/ (after --shard runs)", _build_merge),
    "study": ("resumable grids: `ddkit study hard-truths` (method × IPC × budget × regime), cross-arch, efficiency, "
              "continual", _build_study),
    "dcs": ("Distillation Correlation Score: does a method's loss predict students' test loss?", _build_dcs),
    "import": ("turn a set made elsewhere (ImageFolder, DD-Ranking images.pt, safetensors) into a ddkit set",
               _build_import),
    "export": ("write a ddkit set as an ImageFolder, DD-Ranking images.pt/labels.pt or safetensors", _build_export),
    "inspect": ("print a summary of a distilled set", _build_inspect),
    "demo": ("offline end-to-end demo on digits (teacher, a method of each family or --all, HL/SL/SL+KD, "
             "report.html)", _build_demo),
}


def _command_from_argv(argv: Sequence[str]) -> Optional[str]:
    """The subcommand named in `argv` (the first word that is not a top-level option), or None."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--plugin":
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def build_parser(argv: Sequence[str] = (), full: bool = False) -> argparse.ArgumentParser:
    """The `ddkit` parser; only the command named in `argv` gets its flags (all of them with `full`)."""
    from ddkit.config import OneLineParser

    parser = OneLineParser(prog="ddkit", description="Dataset distillation toolkit: condense, relabel, "
                                     "evaluate under HL / SL / SL+KD beside a random subset.")
    parser.add_argument("--version", action="version", version=f"ddkit {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                        help="import a file or module that registers datasets/models/methods before the command "
                             "runs (repeatable; may also follow the command); installed `ddkit.plugins` entry "
                             "points load by themselves")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_from_argv(argv)
    for name, (help_, build) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if build is not None and (full or name == chosen):
            build(p, argv)
    return parser


COMMANDS = {"datasets": cmd_list, "models": cmd_list, "methods": cmd_list, "recipes": cmd_list,
            "teacher": cmd_teacher, "experts": cmd_experts, "distill": cmd_distill, "evaluate": cmd_evaluate,
            "inspect": cmd_inspect,
            "demo": cmd_demo, "study": cmd_study, "dcs": cmd_dcs, "merge": cmd_merge, "relabel": cmd_relabel,
            "import": cmd_import, "export": cmd_export}


def _is_user_error(e: BaseException) -> bool:
    """A mistake the user can fix (one line, exit 2) rather than a bug (traceback)."""
    from ddkit.registry import UnknownNameError

    # OSError: missing files, existing outputs, permissions, a full disk - the user's to fix.
    if isinstance(e, (UnknownNameError, OSError, ValueError)):
        return True
    # DDKitError lives in ddkit.utils, which imports torch: if that module was never imported, no
    # DDKitError can have been raised, and the instant commands stay torch-free.
    utils = sys.modules.get("ddkit.utils")
    return utils is not None and isinstance(e, utils.DDKitError)


def _process_group():
    """torchrun's process group for the whole command (a no-op context in a plain process)."""
    if "RANK" not in os.environ:
        return contextlib.nullcontext()
    from ddkit.ranks import process_group

    return process_group()


def _say_device(args: argparse.Namespace) -> None:
    """Every run says which device it uses, and why `--device auto` fell back to the CPU (old driver, no GPU)."""
    if getattr(args, "device", None) is None:
        return
    from ddkit.utils import device_note, get_device

    rank = f"[rank {os.environ['RANK']}] " if "RANK" in os.environ else ""
    print(f"ddkit: {rank}{device_note(get_device(args.device))}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `ddkit` console script."""
    from ddkit.plugins import load_entry_points, load_plugin, split_plugin_args

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, plugin_specs = split_plugin_args(argv)
        if _command_from_argv(argv) in SUBCOMMANDS:  # `--help` / `--version` alone need no plugin
            load_entry_points()
            for spec in plugin_specs:
                load_plugin(spec)
        from ddkit.config_file import parse_with_config

        args = parse_with_config(build_parser, argv, _method_from_argv)
        if not args.command:
            build_parser(argv).print_help()
            return EXIT_USAGE
        if SUBCOMMANDS[args.command][1] is not None:  # the list commands stay torch-free
            from ddkit.safe_paths import check_paths
            from ddkit.validate import check_device

            check_device(getattr(args, "device", None))
            check_paths(args, plugin_specs)  # one rule for every command: no write touches a read
            from ddkit.allocator import keep_freed_memory

            keep_freed_memory()  # no mmap/munmap page faults per training step (see ddkit.allocator)
            _say_device(args)
        with _feedback(args), _process_group():  # torchrun: the one place the group is joined and left
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("ddkit: interrupted (outputs are written atomically; nothing partial was kept)", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_user_error(e):
            raise
        print(f"ddkit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
