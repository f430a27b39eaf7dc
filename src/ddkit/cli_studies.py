"""Flags and commands of `ddkit study cross-arch | efficiency | continual` (the parser hooks them into `study`).

Kept out of cli.py / cli_commands.py so those stay small; like them, every heavy import is inside a function.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, List

STUDY_HELP = {
    "cross-arch": "distil once per (method, observer network), train students of every verifier architecture "
                  "(≥ 3 seeds, random beside): the matrix, a heatmap; resumable",
    "efficiency": "wall and CPU seconds, images/s and peak memory to make 100 images, per (method, observer), "
                  "interleaved repetitions; resumable",
    "continual": "class-incremental learning with the distilled set as the only memory: classes in seeded steps, "
                 "a student per step on the memory of the classes seen; resumable",
}


def _extras(p: argparse.ArgumentParser, eval_opts: bool = True, test_subset: bool = True) -> None:
    p.add_argument("--method-opt", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option for every set of that method, e.g. sre2l.iterations=500 (repeatable; "
                        "part of the set's cache key)")
    if eval_opts:
        p.add_argument("--eval-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="an evaluator option for every student, e.g. cpu_amp=true (repeatable; pinned)")
        p.add_argument("--exact", action="store_true", help="fp32 eager students (no bf16 autocast, no compile) "
                       "instead of the machine's fast default; same as --eval-opt exact=true")
    if test_subset:
        p.add_argument("--test-per-class", type=int, default=None, metavar="N",
                       help="CPU-sized runs: score students on N test images per class (class-balanced, seed 0; "
                            "pinned in study.json) instead of the whole test split (default: all)")


def build_study_parsers(ssub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the three study subcommands to `ssub` (the `study` subparsers); `common` adds the data flags."""
    from ddkit.config import add_dataclass_args
    from ddkit.study_continual import ContinualConfig
    from ddkit.study_crossarch import CrossArchConfig
    from ddkit.study_efficiency import EfficiencyConfig

    ca = ssub.add_parser("cross-arch", help=STUDY_HELP["cross-arch"], description=STUDY_HELP["cross-arch"])
    common(ca)
    ca.add_argument("--observers", action="append", default=[], metavar="NAME=TEACHER",
                    help="observer networks as NAME=teacher checkpoint (comma-separated or repeated; train one with "
                         "`ddkit teacher train --model ARCH`); its architecture is the observer")
    ca.add_argument("--bn-teachers", action="append", default=[], metavar="NAME=TEACHER",
                    help="a BatchNorm teacher per observer for methods that match BN statistics (sre2l), e.g. "
                         "ConvNet-3=bench/teachers/cifar10_jpeg75_convnet3bn_e30")
    add_dataclass_args(ca, CrossArchConfig)
    _extras(ca)
    ef = ssub.add_parser("efficiency", help=STUDY_HELP["efficiency"], description=STUDY_HELP["efficiency"])
    common(ef)
    ef.add_argument("--buffers", action="append", default=[], metavar="ARCH=BUF",
                    help="expert buffer per observer architecture for mtt/datm (`ddkit experts train --arch ARCH`)")
    add_dataclass_args(ef, EfficiencyConfig)
    _extras(ef, eval_opts=False, test_subset=False)
    co = ssub.add_parser("continual", help=STUDY_HELP["continual"], description=STUDY_HELP["continual"])
    common(co)
    co.add_argument("--teacher", default=None, help="teacher checkpoint (teacher-based methods, sl/slkd labels)")
    co.add_argument("--teacher-arch", default=None, help="architecture of --teacher when the file does not say")
    co.add_argument("--bn-teacher", default=None, help="a BatchNorm teacher that makes the sets of methods matching "
                    "BN statistics (sre2l) when --teacher has none")
    add_dataclass_args(co, ContinualConfig)
    _extras(co)


def _teachers(items: List[str], what: str, train: Any, device: Any) -> Dict[str, Any]:
    from ddkit.study_cells import parse_mapping
    from ddkit.teachers import load_teacher

    return {name: load_teacher(path, dataset=train, device=device) for name, path in parse_mapping(items, what).items()}


def _check_paths(args: argparse.Namespace, out: str, sets_dir: Any, reads: List[str]) -> None:
    from ddkit.safe_paths import Declared, check_declared, declared

    writes = [Declared(out, "the study's output_dir")] + ([Declared(sets_dir, "--sets-dir")] if sets_dir else [])
    check_declared(writes, declared(args)[1] + [Declared(p, "an input checkpoint/buffer") for p in reads])


def cmd_study_more(args: argparse.Namespace, dataset: Callable[[argparse.Namespace, str], Any]) -> int:
    """Run `ddkit study cross-arch | efficiency | continual`; `dataset(args, split)` loads a split."""
    from ddkit.config import dump, from_args, parse_key_values
    from ddkit.config_file import save_record
    from ddkit.study_cells import class_subset, parse_mapping
    from ddkit.utils import get_device

    kind = args.study_command
    device = get_device(args.device)
    mopts = parse_key_values(args.method_opt, dotted=True)
    if kind == "efficiency":
        from ddkit.study_efficiency import EfficiencyConfig, run_efficiency

        cfg = from_args(EfficiencyConfig, args)
        buffers = parse_mapping(args.buffers, "--buffers")
        _check_paths(args, cfg.output_dir, None, list(buffers.values()))
        print(dump(cfg, title="study efficiency"))
        rows = run_efficiency(dataset(args, "train"), cfg, device=device, progress=not args.no_progress,
                              method_overrides=mopts, buffers=buffers)
        failed = sum(r.get("status") == "failed" for r in rows)
        print(f"{len(rows) - failed} measurements" + (f", {failed} failed (reasons in the report; rerun to retry)"
                                                      if failed else "") + f"; report: {Path(cfg.output_dir) / 'report.md'}")
        save_record(Path(cfg.output_dir) / "config.yaml", args, cfg)
        return 0
    eopts = {**parse_key_values(args.eval_opt), **({"exact": True} if args.exact else {})}
    train = dataset(args, "train")
    test = class_subset(dataset(args, "test"), args.test_per_class)
    test_facts = {"per_class": args.test_per_class, "seed": 0, "images": len(test)} if args.test_per_class else {}
    if kind == "cross-arch":
        from ddkit.study_crossarch import CrossArchConfig, run_crossarch

        cfg = from_args(CrossArchConfig, args)
        paths = list(parse_mapping(args.observers, "--observers").values()) + list(
            parse_mapping(args.bn_teachers, "--bn-teachers").values())
        _check_paths(args, cfg.output_dir, cfg.sets_dir, paths)
        print(dump(cfg, title="study cross-arch"))
        rows = run_crossarch(train, test, _teachers(args.observers, "--observers", train, device), cfg,
                             bn_teachers=_teachers(args.bn_teachers, "--bn-teachers", train, device), device=device,
                             progress=not args.no_progress, method_overrides=mopts, eval_overrides=eopts,
                             test_facts=test_facts)
    else:
        from ddkit.cli_commands import _teacher
        from ddkit.study_continual import ContinualConfig, run_continual

        cfg = from_args(ContinualConfig, args)
        _check_paths(args, cfg.output_dir, cfg.sets_dir, [args.bn_teacher] if args.bn_teacher else [])
        print(dump(cfg, title="study continual"))
        from ddkit.teachers import load_teacher

        bn = load_teacher(args.bn_teacher, dataset=train, device=device) if args.bn_teacher else None
        rows = run_continual(train, test, _teacher(args, train, device), cfg, bn_teacher=bn, device=device,
                             progress=not args.no_progress, method_overrides=mopts, eval_overrides=eopts,
                             test_facts=test_facts)
    save_record(Path(cfg.output_dir) / "config.yaml", args, cfg)
    print(f"{len(rows)} cells; report: {Path(cfg.output_dir) / 'report.md'}")
    return 0
