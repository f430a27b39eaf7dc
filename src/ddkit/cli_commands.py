"""What each `ddkit` command does once its flags are parsed: load data, call the library, print.

Kept apart from cli.py (the parser and entry point) so the parser stays small; every import is
inside a function, so importing this module costs nothing (the instant commands import no torch).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

EXIT_USAGE = 2


def _plugins_loaded() -> bool:
    from ddkit.plugins import loaded_plugins

    return bool(loaded_plugins())


def _dataset(args: argparse.Namespace, split: str):
    """One split as the flags ask: `--classes` on every split, `--max-per-class` on the train split."""
    from ddkit.data import class_balanced_subset, create_dataset

    ds = create_dataset(args.dataset, root=args.data_root, split=split, cache_dir=args.cache_dir,
                        download=args.download, progress=not args.no_progress, classes=_classes(args),
                        image_size=getattr(args, "image_size", None))
    if split == "train" and args.max_per_class is not None:
        ds = class_balanced_subset(ds, args.max_per_class, seed=SUBSET_SEED)
    return ds


SUBSET_SEED = 0  # fixed, so |train| identifies the subset in every cache key that counts images


def _classes(args: argparse.Namespace) -> Optional[List[str]]:
    return [c.strip() for c in args.classes.split(",") if c.strip()] if getattr(args, "classes", None) else None


def _subset_record(args: argparse.Namespace, train) -> Optional[Dict[str, Any]]:
    """The facts of `--classes` / `--max-per-class` that every output records (None without them)."""
    from ddkit.data import subset_facts

    return subset_facts(train, args.max_per_class, _classes(args), seed=SUBSET_SEED)


def _write_subset_record(folder: str | Path, record: Optional[Dict[str, Any]]) -> None:
    if record is not None:
        import json

        from ddkit.utils import atomic_write_bytes

        atomic_write_bytes(Path(folder) / "data_subset.json", (json.dumps(record, indent=1) + "\n").encode())


@contextlib.contextmanager
def _whole_or_nothing(out: str | Path) -> Iterator[None]:
    """The steps after an output folder was renamed into place (its config.yaml record): when one fails, e.g.
    on a full disk, the new folder goes too, so no half-written output stays visible (#25). Safe because
    ddkit.safe_paths already refused any output that is, holds or lies inside an input."""
    try:
        yield
    except OSError:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise


def _teacher(args: argparse.Namespace, dataset, device):
    given = [args.teacher] if isinstance(args.teacher, str) else list(args.teacher or [])
    if not given and not getattr(args, "teacher_list", None):
        return None
    from ddkit.teachers import load_teacher

    if len(given) == 1 and not getattr(args, "teacher_list", None):
        return load_teacher(given[0], arch=args.teacher_arch, dataset=dataset, device=device)
    from ddkit.teachers.committee import load_committee, read_teacher_list
    from ddkit.utils import DDKitError

    priors = None
    if getattr(args, "teacher_list", None):
        if given:
            raise DDKitError("--teacher-list names the whole committee: give every teacher in the file, not with "
                             "--teacher")
        given, priors = read_teacher_list(args.teacher_list)
    return load_committee(given, priors=priors, arch=args.teacher_arch, dataset=dataset, device=device)


def cmd_list(args: argparse.Namespace) -> int:
    from ddkit import names

    # The static copy unless a plugin added names (then the live registries, which hold them).
    index = names.live_index() if _plugins_loaded() else names.static_index()
    print(names.format_list(args.command, index))
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from ddkit.config import dump, from_args
    from ddkit.config_file import run_record
    from ddkit.teachers import TeacherConfig, save_teacher, train_teacher
    from ddkit.utils import get_device
    from ddkit.validate import check_config

    if args.teacher_command != "train":
        print("usage: ddkit teacher train --dataset … --model … --output …", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output)
    if (Path(f"{out}.safetensors").exists() or Path(f"{out}.json").exists()) and not args.overwrite:
        raise FileExistsError(f"teacher {out}.safetensors exists; pass --overwrite to replace it")
    cfg = from_args(TeacherConfig, args, base={"arch": args.model_arch} if args.model_arch else None)
    check_config(cfg)
    print(dump(cfg, title="teacher"))
    device = get_device(args.device)
    train, test = _dataset(args, "train"), _dataset(args, "test")
    # Written after every epoch and removed once the teacher is saved: a killed run resumes where it stopped.
    ckpt = Path(f"{out}.ckpt")
    if ckpt.is_file():
        print(f"resuming from {ckpt} (delete it to start over)")
    teacher, metrics = train_teacher(train, test, cfg, device=device, progress=not args.no_progress,
                                     log_path=f"{out}.metrics.jsonl", checkpoint=ckpt)
    record = _subset_record(args, train)
    if record is not None:  # the teacher json's "dataset" says which images it saw
        teacher.meta["dataset"] = (f"{train.name} (subset: max {record['max_per_class']}/class, seed "
                                   f"{record['seed']}, {record['images']} images)")
    save_teacher(teacher, out, record=run_record(args, cfg, model=cfg.arch))
    ckpt.unlink(missing_ok=True)
    print(f"test accuracy {metrics['test_acc']:.4f}  ({metrics['train_seconds']:.0f} s)  saved {out}.safetensors")
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    from ddkit.config import dump, from_args
    from ddkit.config_file import save_record
    from ddkit.teachers.experts import ExpertConfig, parse_shard, train_experts
    from ddkit.utils import get_device

    if args.experts_command != "train":
        print("usage: ddkit experts train --dataset … --output BUF [--preset cpu] [--sam] [--shard i/n]",
              file=sys.stderr)
        return EXIT_USAGE
    cfg = from_args(ExpertConfig, args)
    print(dump(cfg, title="experts"))
    done = train_experts(_dataset(args, "train"), _dataset(args, "test"), cfg, args.output,
                         device=get_device(args.device), shard=parse_shard(args.shard), progress=not args.no_progress)
    # Expert e's bytes depend on (seed, e) only, not on the shard that trained it: the record is the whole buffer.
    save_record(Path(args.output) / "config.yaml", args, cfg, drop=("shard",))
    print(f"trained {len(done)} expert(s) {done}; buffer {args.output}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from ddkit.config import dump, from_args
    from ddkit.config_file import save_record
    from ddkit.distributed import distill_sharded, parts_dir_for
    from ddkit.methods import create_method, method_spec
    from ddkit.ranks import is_main
    from ddkit.utils import get_device
    from ddkit.validate import check_config

    spec = method_spec(args.method)
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"output {out} exists; pass --overwrite to replace it")
    cfg = from_args(spec.config, args)
    check_config(cfg)
    if is_main():
        print(dump(cfg, title=f"method {spec.name}"))
    device = get_device(args.device)
    train = _dataset(args, "train")
    teacher = _teacher(args, train, device)
    if teacher is not None and not args.skip_teacher_check:
        from ddkit.teachers import check_teacher

        test = _dataset(args, "test")
        for member in getattr(teacher, "members", [teacher]):  # every member of a committee on its own
            acc = check_teacher(member, test, device=device)
            if is_main():
                print(f"teacher sanity check ({member.arch}): {acc:.3f} accuracy on a sample of real test images")
    method = create_method(spec.name, **{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    # Always through per-class parts, even in one process: a killed run loses one class at most, and
    # --resume only decides whether existing parts are reused.
    result = distill_sharded(method, train, teacher, out, shard=args.shard, resume=args.resume,
                             overwrite=args.overwrite, device=device, progress=not args.no_progress,
                             merge=not args.no_merge, extra_meta={"dataset_root": args.data_root,
                                                                  "data_subset": _subset_record(args, train)})
    # The set's bytes do not depend on how the classes were split (seeds come from (seed, class)), so the
    # record is the whole one-process run; a shard that does not merge leaves it in OUTPUT.parts/ for `merge`.
    unsplit = ("shard", "resume", "no_merge")
    if result is None and args.shard is None and not args.no_merge:
        # One unsharded run whose merge a concurrent run of the same command did (or is doing): the set's
        # bytes are the same whoever merges, so this is success, not a shard waiting for `ddkit merge` (#25).
        if is_main():
            print(f"saved {out} (merged by a concurrent run of the same command)" if out.is_dir() else
                  f"a concurrent run of the same command is merging {out}; it is complete when that run ends")
        return 0
    if result is None:
        save_record(parts_dir_for(out) / "config.yaml", args, cfg, drop=unsplit)
        if is_main():
            print(f"shard done; when every shard has finished, merge with `ddkit merge {out}`")
        return 0
    if is_main():
        with _whole_or_nothing(out):
            save_record(out / "config.yaml", args, cfg, drop=unsplit)
        print(result.summary())
        print(f"saved {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ddkit.distributed import merge_parts, parts_dir_for

    parts = parts_dir_for(args.output)
    result = merge_parts(parts, args.output, overwrite=args.overwrite, pngs=not args.no_pngs)
    with _whole_or_nothing(args.output):
        _save_merged_record(parts, args)
    print(result.summary())
    print(f"saved {args.output}")
    return 0


def _save_merged_record(parts: Path, args: argparse.Namespace) -> None:
    """The merged set's config.yaml: the shards' distill record (`ddkit distill -c SET/config.yaml` makes the same
    set in one process), with this merge beside it for reading; the merge's own record when the parts carry none
    (parts written through the Python API)."""
    import yaml

    from ddkit.config_file import load_yaml, run_record, save_record
    from ddkit.utils import atomic_write_bytes

    src, dst = parts / "config.yaml", Path(args.output) / "config.yaml"
    shards = load_yaml(src) if src.is_file() else None
    if isinstance(shards, dict) and shards.get("command") == "distill":
        atomic_write_bytes(dst, yaml.safe_dump({**shards, "merged_by": run_record(args)}, sort_keys=False).encode())
    else:
        save_record(dst, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ddkit.config import from_args
    from ddkit.config_file import save_record
    from ddkit.distilled import load_distilled
    from ddkit.evaluate import EvalConfig, run_evaluation

    from ddkit.ranks import is_main
    from ddkit.utils import get_device
    from ddkit.validate import check_config

    cfg = from_args(EvalConfig, args)
    check_config(cfg)
    device = get_device(args.device)
    distilled = load_distilled(args.distilled)  # fail early with a clear message on a bad folder
    test = _dataset(args, "test")
    train = _dataset(args, "train")
    teacher = _teacher(args, train, device)
    students = tuple(s for s in args.students.split(",") if s) if args.students else None
    # The random real subset is judged beside every set unless --no-random (which wins over a config file's
    # old `with_random: true`); it is optional, i.e. a note when it cannot be drawn, unless --with-random asked.
    baselines = None if args.no_random else {"random": _random_baseline(distilled.ipc, cfg.seed)}
    optional = () if args.with_random else ("random",)
    run_evaluation(args.distilled, cfg, test=test, train=train, teacher=teacher, output=args.output,
                   overwrite=args.overwrite, baselines=baselines, optional=optional, students=students,
                   device=device, progress=not args.no_progress)
    with _whole_or_nothing(args.output):  # a full disk while writing the record or the page removes the folder
        save_record(Path(args.output) / "config.yaml", args, cfg)  # above the evaluator's resolved facts
        if is_main():
            _write_subset_record(args.output, _subset_record(args, train))
        if is_main():  # the page is drawn from the finished folder, at the report layer (never by the evaluator)
            from ddkit.html_report import write_eval_html

            print(f"report: {write_eval_html(args.output, args.distilled)}")
    return 0


def _random_baseline(ipc: int, seed: int):
    """The random real subset of the same IPC, drawn by the `random` method from the pool the evaluator gives."""
    from ddkit.methods import create_method

    method = create_method("random", ipc=ipc, seed=seed)
    return lambda pool: method(pool, device="cpu", progress=False)


def cmd_relabel(args: argparse.Namespace) -> int:
    from ddkit.config import from_args
    from ddkit.config_file import save_record
    from ddkit.evaluate.stored import RelabelConfig, relabel
    from ddkit.validate import check_config

    cfg = from_args(RelabelConfig, args)
    check_config(cfg)
    from ddkit.ranks import is_main

    # torchrun: the ranks share the epochs (ddkit.labels); rank 0 prints and writes the record
    teacher, ccfg = _relabel_teacher(args)
    store = relabel(args.distilled, teacher, cfg, device=args.device, progress=not args.no_progress and is_main())
    if is_main():
        save_record(Path(store.path) / "config.yaml", args, cfg, ccfg)  # beside the store's meta.json
    return 0


def _relabel_teacher(args: argparse.Namespace):
    """The one teacher of `relabel`, or a Committee of every --teacher / --teacher-list entry (in that order)."""
    from ddkit.config import from_args
    from ddkit.teachers import load_teacher
    from ddkit.teachers.committee import CommitteeConfig, load_committee, read_teacher_list
    from ddkit.utils import DDKitError

    ccfg = from_args(CommitteeConfig, args)
    paths = [args.teacher] if isinstance(args.teacher, str) else list(args.teacher or [])
    priors = None
    if args.teacher_list:
        listed, priors = read_teacher_list(args.teacher_list)
        if priors is not None and paths:
            raise DDKitError("--teacher-list gives prior accuracies: name every teacher in the file, not with --teacher")
        paths += listed
    if not paths:
        raise DDKitError("relabel needs --teacher (repeat it for a committee) or --teacher-list FILE")
    if len(paths) == 1 and ccfg.vote == "mean" and not ccfg.batch_stats:
        return load_teacher(paths[0], arch=args.teacher_arch, device="cpu"), ccfg
    return load_committee(paths, ccfg, priors=priors, arch=args.teacher_arch, device="cpu"), ccfg


def cmd_study(args: argparse.Namespace) -> int:
    from ddkit.config import dump, from_args, parse_key_values
    from ddkit.config_file import save_record
    from ddkit.study import StudyConfig, run_study
    from ddkit.utils import get_device
    from ddkit.safe_paths import Declared, check_declared, declared
    from ddkit.validate import check_config

    if args.study_command in ("cross-arch", "efficiency", "continual"):
        from ddkit.cli_studies import cmd_study_more

        return cmd_study_more(args, _dataset)
    if args.study_command != "hard-truths":
        print("usage: ddkit study hard-truths|cross-arch|efficiency|continual --dataset … (see --help)",
              file=sys.stderr)
        return EXIT_USAGE
    from ddkit.study import preset_fields

    preset = getattr(args, "preset", None)  # from a flag or the -c file (both land in args)
    # The preset fills what neither the file nor a flag sets.
    cfg = from_args(StudyConfig, args, base=preset_fields(preset) if preset else None)
    check_config(cfg)
    # the folder may come from a preset or `-c` file, not a flag: check the resolved one against every read
    check_declared([Declared(cfg.output_dir, "the study's output_dir")], declared(args)[1])
    from ddkit.ranks import is_main

    main = is_main()  # torchrun: the ranks share the grid's cells; rank 0 prints and writes the folder's records
    if main:
        print(dump(cfg, title="study hard-truths"))
    device = get_device(args.device)
    train, test = _dataset(args, "train"), _dataset(args, "test")
    # run_study writes data_subset.json itself, after it checked a resumed folder was made on the same data.
    res = run_study(train, test, _teacher(args, train, device), cfg, device=device,
                    progress=not args.no_progress and main,
                    method_overrides=parse_key_values(args.method_opt, dotted=True),
                    eval_overrides={**parse_key_values(args.eval_opt), **({"exact": True} if args.exact else {})},
                    data_subset=_subset_record(args, train))
    if main:
        save_record(Path(cfg.output_dir) / "config.yaml", args, cfg)
        print(f"{res.evaluated} cells evaluated, {res.skipped} already done; report: {res.report}")
    return 0


def cmd_dcs(args: argparse.Namespace) -> int:
    from ddkit.dcs import dcs_study
    from ddkit.evaluate import EvalConfig
    from ddkit.utils import get_device

    device = get_device(args.device)
    train, test = _dataset(args, "train"), _dataset(args, "test")
    cfg = EvalConfig(protocol="hard-truths", recipe="hardtruths-hl", regime="hl", seeds=1,
                     budget_epochs=args.budget_epochs, exact=bool(getattr(args, "exact", False)))
    res = dcs_study(train, test, args.loss, ipcs=tuple(int(x) for x in args.ipcs.split(",")), subsets=args.subsets,
                    eval_cfg=cfg, teacher=_teacher(args, train, device), seed=args.seed, device=device,
                    progress=not args.no_progress)
    text = res.to_markdown()
    record = _subset_record(args, train)
    if record is not None:
        text += (f"\n\nData subset: max {record['max_per_class']} train images per class (seed {record['seed']}), "
                 f"classes {record['classes'] or 'all'}, {record['images']} train images.")
    print(text)
    if args.output:
        from ddkit.config_file import save_record
        from ddkit.validate import record_beside

        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        save_record(record_beside(out), args, facts={"student_protocol": cfg})  # `dcs -c OUT.config.yaml` repeats it
    return 0



def cmd_import(args: argparse.Namespace) -> int:
    from ddkit.config_file import save_record
    from ddkit.interop import import_set

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"output {out} exists; pass --overwrite to replace it")
    # The test split gives the class list, normalisation and size the set must match (what evaluate uses).
    target = _dataset(args, "test") if args.dataset else None
    result = import_set(args.source, args.format, dataset=target, pixel_space=args.pixel_space, method=args.method,
                        pixel_scale=getattr(args, "pixel_scale", None))
    gone = result.meta["imported"].get("missing_classes")
    if gone:  # not an error (a set may cover some classes on purpose), but never silent
        print(f"ddkit: warning: the imported set has no image of {len(gone)} class(es): "
              f"{', '.join(gone[:10])}{' …' if len(gone) > 10 else ''}", file=sys.stderr)
    result.meta["data_subset"] = {"classes": _classes(args)} if _classes(args) else None
    result.save(out, overwrite=args.overwrite)
    with _whole_or_nothing(out):
        save_record(out / "config.yaml", args)
    print(result.summary())
    cmap = result.meta["imported"].get("class_map")
    if cmap:
        print("class folders: " + ", ".join(f"{k} -> {v}" for k, v in list(cmap.items())[:10])
              + (" …" if len(cmap) > 10 else ""))
    print(f"saved {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ddkit.config_file import save_record
    from ddkit.distilled import load_distilled
    from ddkit.interop import export_set

    out = export_set(load_distilled(args.distilled), args.output, args.format, pixel_space=args.pixel_space,
                     overwrite=args.overwrite)
    with _whole_or_nothing(out):
        save_record(out / "config.yaml", args)  # a file at the top: ImageFolder readers look at class folders only
    print((out / "README.md").read_text().split("\n\n")[2])
    print(f"saved {out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ddkit.distilled import load_distilled

    print(load_distilled(args.path).summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ddkit.config_file import save_record
    from ddkit.demo import DemoConfig, run_demo
    from ddkit.utils import DDKitError

    # fixed sizes, not flags (recorded beside the flags `-c` reads); only the method list is chosen
    if getattr(args, "all", False) and getattr(args, "methods", None):
        raise DDKitError("--all and --methods exclude each other: --all runs every registered method")
    methods = () if getattr(args, "all", False) else tuple(
        m.strip() for m in (getattr(args, "methods", None) or "").split(",") if m.strip()) or DemoConfig().methods
    cfg = DemoConfig(methods=methods)
    if getattr(args, "exact", False):  # fp32 eager students (evaluate/fastpath.py)
        import dataclasses

        cfg = dataclasses.replace(cfg, exact=True)
    try:
        run_demo(args.output, device=args.device, progress=not args.no_progress, cfg=cfg)
    except DDKitError:  # a demo with a failed method still wrote its report: its record goes beside it
        if (Path(args.output) / "results.json").is_file():
            save_record(Path(args.output) / "config.yaml", args, facts={"demo": cfg})
        raise
    save_record(Path(args.output) / "config.yaml", args, facts={"demo": cfg})
    return 0
