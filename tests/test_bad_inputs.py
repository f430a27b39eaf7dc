"""The bad-input battery: every case runs through the CLI entry point in-process and must end with
exit code 2, exactly one stderr line that names the fix, no traceback, and every pre-existing file
byte-identical (issue #14). Each case is one distinct bad input; docs/refuses.md lists them by rule."""
from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ddkit.cli import main
from ddkit.distilled import DistilledSet
from ddkit.models import create_model
from ddkit.data import create_dataset
from ddkit.teachers import Teacher, TeacherConfig, save_teacher, train_teacher

CPU = ["--device", "cpu", "--no-progress"]
DIGITS = ["--dataset", "digits", *CPU]


def _snapshot(root: Path) -> Dict[str, bytes]:
    """Every file under root (or root itself) with its bytes."""
    if root.is_file():
        return {str(root): root.read_bytes()}
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A good set (digits, 2 per class, with soft and 2×2 region labels), a teacher, a grey image folder."""
    root = tmp_path_factory.mktemp("bad")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(2)
    DistilledSet(torch.rand(20, 1, 8, 8, generator=g), labels, [str(i) for i in range(10)], [0.5], [0.25],
                 soft={"soft": torch.randn(20, 10, generator=g), "region_soft": torch.randn(20, 4, 10, generator=g)},
                 meta={"method": "random", "factor": 2}).save(root / "set", pngs=False)
    torch.manual_seed(0)
    net = create_model("convnet-d1", 10, 8, 1, width=8)
    save_teacher(Teacher(net, "convnet-d1", [str(i) for i in range(10)], [0.5], [0.25], 8, 1,
                         meta={"dataset": "digits"}, arch_kw={"width": 8}), root / "teacher")
    train, test = (create_dataset("digits", split=s, progress=False) for s in ("train", "test"))
    good, m = train_teacher(train, test, TeacherConfig(arch="convnet-d1-bn", arch_kw={"width": 16}, epochs=8,
                                                      batch_size=64), device="cpu", progress=False)
    assert m["test_acc"] > 0.9
    save_teacher(good, root / "good")
    for split, classes in (("train", "ab"), ("val", "a")):  # an image folder whose val/ lacks class b
        for c in classes:
            (root / "folder" / split / c).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * k, dtype=np.uint8)).save(root / "folder" / split / c / f"{k}.png")
    return root


def _copy_set(base: Path, tmp: Path) -> Path:
    out = tmp / "set"
    shutil.copytree(base / "set", out)
    return out


def _edit_tensors(path: Path, **changes) -> None:
    t = load_file(str(path))
    t.update(changes)
    save_file(t, str(path))


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("MARKER-never-created"),))


def _set_case(edit: Callable[[Path], None]) -> Callable[[Path, Path], Tuple[List[str], List[Path]]]:
    def make(base: Path, tmp: Path):
        s = _copy_set(base, tmp)
        edit(s)
        return ["evaluate", str(s), *DIGITS, "--regime", "hl", "--output", str(tmp / "ev")], [s]
    return make


def _inspect_case(edit: Callable[[Path], None]):
    def make(base: Path, tmp: Path):
        s = _copy_set(base, tmp)
        edit(s)
        return ["inspect", str(s)], [s]
    return make


def _meta(**kw):
    def edit(s: Path) -> None:
        m = json.loads((s / "meta.json").read_text())
        m.update(kw)
        (s / "meta.json").write_text(json.dumps(m))
    return edit


def _labels(values):
    return lambda s: _edit_tensors(s / "labels.safetensors", hard=torch.tensor(values + [0] * (20 - len(values))))


def _pixels(value):
    def edit(s: Path) -> None:
        x = load_file(str(s / "images.safetensors"))["images"]
        x[3, 0, 2, 2] = value
        save_file({"images": x}, str(s / "images.safetensors"))
    return edit


def _truncate(name: str, keep: int):
    def edit(s: Path) -> None:
        p = s / name
        p.write_bytes(p.read_bytes()[:keep])
    return edit


def _pickle_as(name: str, zip_format: bool = False):
    def edit(s: Path) -> None:
        if zip_format:
            torch.save({"images": torch.zeros(1)}, s / name)
        else:
            (s / name).write_bytes(pickle.dumps(_Evil(), protocol=2))
    return edit


def _zero_images(s: Path) -> None:
    save_file({"images": torch.zeros(0, 1, 8, 8)}, str(s / "images.safetensors"))
    save_file({"hard": torch.zeros(0, dtype=torch.long)}, str(s / "labels.safetensors"))


def _soft(**kw):
    return lambda s: _edit_tensors(s / "labels.safetensors", **kw)


def _nan_soft(s: Path) -> None:
    t = load_file(str(s / "labels.safetensors"))
    t["soft"][0, 0] = float("nan")
    save_file(t, str(s / "labels.safetensors"))


def _cli(argv_of: Callable[[Path, Path], List[str]], protect: Callable[[Path, Path], List[Path]] = lambda b, t: []):
    def make(base: Path, tmp: Path):
        return argv_of(base, tmp), protect(base, tmp)
    return make


def _yaml_case(text: str, command: Callable[[Path, Path], List[str]]):
    def make(base: Path, tmp: Path):
        cfg = tmp / "c.yaml"
        cfg.write_text(text)
        return [*command(base, tmp), "-c", str(cfg)], [cfg]
    return make


def _distill_out(base: Path, tmp: Path) -> List[str]:
    return ["distill", *DIGITS, "--output", str(tmp / "out")]


def _eval_set(base: Path, tmp: Path) -> List[str]:
    return ["evaluate", str(base / "set"), *DIGITS, "--regime", "hl", "--output", str(tmp / "ev")]


def _teacher_case(edit: Callable[[Path], None], source: str = "teacher"):
    def make(base: Path, tmp: Path):
        for suf in (".safetensors", ".json"):
            shutil.copy(base / f"{source}{suf}", tmp / f"teacher{suf}")
        edit(tmp)
        argv = ["distill", *DIGITS, "--method", "herding", "--ipc", "1", "--teacher", str(tmp / "teacher"),
                "--output", str(tmp / "out")]
        return argv, [tmp / "teacher.safetensors", tmp / "teacher.json"]
    return make


def _teacher_json(**kw):
    def edit(t: Path) -> None:
        m = json.loads((t / "teacher.json").read_text())
        m.update(kw)
        (t / "teacher.json").write_text(json.dumps(m))
    return edit


def _swap_classes(t: Path) -> None:
    w = load_file(str(t / "teacher.safetensors"))
    for k in ("classifier.weight", "classifier.bias"):
        w[k][[3, 5]] = w[k][[5, 3]].clone()
    save_file(w, str(t / "teacher.safetensors"))


def _pth(content: Callable[[Path], None]):
    def make(base: Path, tmp: Path):
        p = tmp / "digits_convnet-d1.pth"
        content(p)
        argv = ["distill", *DIGITS, "--method", "herding", "--ipc", "1", "--teacher", str(p),
                "--teacher-arch", "convnet-d1", "--output", str(tmp / "out")]
        return argv, [p]
    return make


#: id -> (builder(base, tmp) -> (argv, protected paths), words the single stderr line must contain)
CASES = {
    # -- a distilled set that would give wrong results or a traceback --------------------------------
    "label-99": (_set_case(_labels([99])), "label 99 is outside 0..9"),
    "label-minus-1": (_set_case(_labels([-1])), "label -1 is outside 0..9"),
    "inspect-label-99": (_inspect_case(_labels([99])), "label 99 is outside"),
    "truncated-images": (_set_case(_truncate("images.safetensors", 100)), "truncated"),
    "inspect-truncated-images": (_inspect_case(_truncate("images.safetensors", 100)), "truncated"),
    "truncated-labels-header": (_set_case(_truncate("labels.safetensors", 5)), "truncated"),
    "empty-images-file": (_set_case(_truncate("images.safetensors", 0)), "truncated"),
    "pickle-renamed-images": (_set_case(_pickle_as("images.safetensors")), "Python pickle, not safetensors"),
    "torch-save-renamed-labels": (_set_case(_pickle_as("labels.safetensors", zip_format=True)),
                                  "torch.save/zip archive, not safetensors"),
    "zero-images": (_set_case(_zero_images), "holds 0 images"),
    "nan-pixels": (_set_case(_pixels(float("nan"))), "NaN or Inf"),
    "inf-pixels": (_set_case(_pixels(float("inf"))), "NaN or Inf"),
    "nan-soft-labels": (_set_case(_nan_soft), "soft label 'soft' holds NaN"),
    "soft-wrong-classes": (_set_case(_soft(soft=torch.zeros(20, 7))), "has 7 classes"),
    "factor-4-vs-region": (_set_case(_meta(factor=4)), "factor 4 contradicts region_soft's 4 cells"),
    "factor-0": (_set_case(_meta(factor=0)), "factor 0 must be a whole number"),
    "meta-not-json": (_set_case(lambda s: (s / "meta.json").write_text("{oops")), "meta.json is not valid JSON"),
    "meta-no-classes": (_set_case(_meta(classes=None)), "meta.json lacks the list 'classes'"),
    "missing-labels-file": (_set_case(lambda s: (s / "labels.safetensors").unlink()), "labels.safetensors is missing"),
    "set-not-found": (_cli(lambda b, t: ["evaluate", str(t / "nope"), *DIGITS, "--output", str(t / "ev")]),
                      "not found"),
    # -- outputs that would destroy an input ---------------------------------------------------------
    "eval-output-is-set": (_cli(lambda b, t: ["evaluate", str(_copy_set(b, t)), *DIGITS, "--output", str(t / "set"),
                                              "--overwrite"], lambda b, t: [t / "set"]), "is the input"),
    "eval-output-inside-set": (_cli(lambda b, t: ["evaluate", str(_copy_set(b, t)), *DIGITS, "--output",
                                                  str(t / "set" / "ev"), "--overwrite"], lambda b, t: [t / "set"]),
                               "is inside the input"),
    "eval-output-contains-set": (_cli(lambda b, t: ["evaluate", str(_copy_set(b, t)), *DIGITS, "--output", str(t),
                                                    "--overwrite"], lambda b, t: [t / "set"]), "contains the input"),
    "distill-output-is-teacher": (_teacher_case(lambda t: None), None),  # replaced below (needs the path)
    "distill-output-in-dataset": (_cli(lambda b, t: ["distill", "--dataset", f"folder:{t}", *CPU, "--output",
                                                     str(t / "train" / "x")]), "is inside the input"),
    # -- options no stage can run with ---------------------------------------------------------------
    "kl-temperature-0": (_cli(lambda b, t: [*_eval_set(b, t), "--loss", "kl", "--temperature", "0"]),
                         "--temperature must be > 0"),
    "teacher-batch-size-0": (_cli(lambda b, t: ["teacher", "train", *DIGITS, "--batch-size", "0",
                                                "--output", str(t / "t")]), "--batch-size must be ≥ 1"),
    "teacher-epochs-0": (_cli(lambda b, t: ["teacher", "train", *DIGITS, "--epochs", "0", "--output", str(t / "t")]),
                         "--epochs must be ≥ 1"),
    "teacher-lr-negative": (_cli(lambda b, t: ["teacher", "train", *DIGITS, "--lr=-0.1", "--output", str(t / "t")]),
                            "--lr must be > 0"),
    "distill-ipc-0": (_cli(lambda b, t: [*_distill_out(b, t), "--ipc", "0"]), "--ipc must be ≥ 1"),
    "d4m-no-weights": (_cli(lambda b, t: [*_distill_out(b, t), "--method", "d4m"]), "d4m needs local Stable Diffusion"),
    "minimax-weights-missing": (_cli(lambda b, t: [*_distill_out(b, t), "--method", "minimax", "--weights",
                                                   str(t / "dit")]), "weights folder"),
    "eval-seeds-0": (_cli(lambda b, t: [*_eval_set(b, t), "--seeds", "0"]), "--seeds must be ≥ 1"),
    "eval-lr-nan": (_cli(lambda b, t: [*_eval_set(b, t), "--lr", "nan"]), "--lr must be a finite number"),
    "device-cuda-unavailable": (_cli(lambda b, t: ["distill", "--dataset", "digits", "--no-progress", "--device",
                                                   "cuda:99", "--output", str(t / "o")]), "--device cuda:99"),
    "device-bogus": (_cli(lambda b, t: ["distill", "--dataset", "digits", "--device", "gpu0",
                                        "--output", str(t / "o")]), "is not a device"),
    "flag-not-an-int": (_cli(lambda b, t: [*_distill_out(b, t), "--ipc", "abc"]), "invalid int value"),
    "unknown-flag": (_cli(lambda b, t: [*_distill_out(b, t), "--ipcc", "3"]), "unrecognized arguments"),
    # -- config files --------------------------------------------------------------------------------
    "yaml-ipc-abc": (_yaml_case("ipc: abc\n", _distill_out), "ipc: 'abc' is not a whole number"),
    "yaml-malformed": (_yaml_case("ipc: [1,\n", _distill_out), "is not valid YAML at line"),
    "yaml-unknown-key": (_yaml_case("ipcc: 5\n", _distill_out), "unknown key(s) ipcc"),
    "yaml-eval-unknown-key": (_yaml_case("teacher_path: x\n", _eval_set), "unknown key(s) teacher_path"),
    "yaml-a-list": (_yaml_case("- 1\n- 2\n", _distill_out), "must hold a mapping"),
    "yaml-other-command": (_yaml_case("command: evaluate\nargs: {ipc: 1}\n", _distill_out),
                           "records a `ddkit evaluate` run"),
    "yaml-missing": (_cli(lambda b, t: [*_distill_out(b, t), "-c", str(t / "none.yaml")]),
                     "config file"),
    # -- teachers ------------------------------------------------------------------------------------
    "teacher-truncated": (_teacher_case(lambda t: _truncate("teacher.safetensors", 40)(t)), "truncated"),
    "teacher-pickle-renamed": (_teacher_case(lambda t: (t / "teacher.safetensors").write_bytes(
        pickle.dumps(_Evil(), protocol=2))), "Python pickle, not safetensors"),
    "teacher-json-broken": (_teacher_case(lambda t: (t / "teacher.json").write_text("{")), "teacher.json is not valid"),
    "teacher-json-bad-std": (_teacher_case(_teacher_json(std=[0])), "'std' must be > 0"),
    "teacher-json-mean-text": (_teacher_case(_teacher_json(mean="abc")), "'mean' must be a list of numbers"),
    "teacher-pth-evil-pickle": (_pth(lambda p: p.write_bytes(pickle.dumps(_Evil(), protocol=2))), "refuses to unpickle"),
    "teacher-pth-truncated": (_pth(lambda p: (torch.save({"a": torch.zeros(3)}, p),
                                              p.write_bytes(p.read_bytes()[:50]))), "not a readable torch checkpoint"),
    "teacher-wrong-mean-std": (_teacher_case(_teacher_json(mean=[0.6], std=[0.1]), "good"), "its json records"),
    "teacher-classes-3-5-swapped": (_teacher_case(_swap_classes, "good"), "json records"),
    "teacher-at-chance": (_teacher_case(lambda t: None), "class-order mismatch"),
    "teacher-train-diverges": (_cli(lambda b, t: ["teacher", "train", *DIGITS, "--model", "convnet-d1", "--epochs", "2",
                                                  "--lr", "1000", "--output", str(t / "t")]), "diverged at lr 1000"),
    "teacher-not-found": (_cli(lambda b, t: [*_distill_out(b, t), "--method", "herding", "--teacher",
                                             str(t / "nope")]), "not found"),
    # -- datasets ------------------------------------------------------------------------------------
    "tar-not-an-archive": (_cli(lambda b, t: (t.joinpath("x.tar").write_bytes(b"not a tar" * 100),
                                              ["distill", "--dataset", f"tar:{t / 'x.tar'}", *CPU,
                                               "--cache-dir", str(t / "cache"), "--output", str(t / "o")])[1],
                                lambda b, t: [t / "x.tar"]), "cannot read archive"),
    "test-split-missing-class": (_cli(lambda b, t: ["evaluate", str(b / "set"), "--dataset", f"folder:{b / 'folder'}",
                                                    *CPU, "--cache-dir", str(t / "cache"), "--output", str(t / "ev")]),
                                 "lacks class folder(s) b"),
    "folder-missing": (_cli(lambda b, t: ["distill", "--dataset", f"folder:{t / 'nope'}", *CPU,
                                          "--output", str(t / "o")]), "not found"),
    "dataset-unknown": (_cli(lambda b, t: ["distill", "--dataset", "cifar11", *CPU, "--output", str(t / "o")]),
                        "Known:"),
}


def _output_is_teacher(base: Path, tmp: Path):
    argv, protect = _teacher_case(lambda t: None)(base, tmp)
    argv[argv.index("--output") + 1] = str(tmp / "teacher.safetensors")
    return [*argv, "--overwrite"], protect


CASES["distill-output-is-teacher"] = (_output_is_teacher, "is the input")


# -- issue #25 (A): one rule for every command — no write is, contains or lies inside a read ------------------


def _src_folder(base: Path, tmp: Path) -> Path:
    """An ImageFolder source for `import` (two classes of grey PNGs)."""
    src = tmp / "src"
    if not src.exists():
        shutil.copytree(base / "folder" / "train", src)
    return src


def _teacher_copy(base: Path, tmp: Path) -> Path:
    """The tiny teacher copied into tmp/tdir/ (returns its stem)."""
    (tmp / "tdir").mkdir(exist_ok=True)
    for suf in (".safetensors", ".json"):
        shutil.copy(base / f"teacher{suf}", tmp / "tdir" / f"teacher{suf}")
    return tmp / "tdir" / "teacher"


def _buffer(tmp: Path) -> Path:
    """Something standing for an expert buffer (the rule refuses before the buffer is read)."""
    buf = tmp / "buf"
    buf.mkdir(exist_ok=True)
    (buf / "buffer.json").write_text("{}")
    return buf


def _plugin_file(tmp: Path) -> Path:
    p = tmp / "plug" / "p.py"
    p.parent.mkdir(exist_ok=True)
    p.write_text("X = 1\n")
    return p


#: id -> (argv(base, tmp), protected(base, tmp)); every argv writes onto something it reads. The needle is
#: "destroy that input" for all of them.
WALK = {
    # the five destroyed-data cases of the issue
    "import-output-is-source": (lambda b, t: ["import", str(_src_folder(b, t)), "--dataset", "digits", *CPU,
                                              "--output", str(t / "src"), "--overwrite"], lambda b, t: [t / "src"]),
    "import-output-inside-source": (lambda b, t: ["import", str(_src_folder(b, t)), "--dataset", "digits", *CPU,
                                                  "--output", str(t / "src" / "imported"), "--overwrite"],
                                    lambda b, t: [t / "src"]),
    "relabel-store-is-set": (lambda b, t: ["relabel", str(_copy_set(b, t)), "--teacher", str(b / "teacher"), *CPU,
                                           "--store", str(t / "set"), "--overwrite"], lambda b, t: [t / "set"]),
    "relabel-store-holds-teacher": (lambda b, t: ["relabel", str(_copy_set(b, t)), "--teacher",
                                                  str(_teacher_copy(b, t)), *CPU, "--store", str(t / "tdir"),
                                                  "--overwrite"], lambda b, t: [t / "set", t / "tdir"]),
    "relabel-store-is-a-set-file": (lambda b, t: ["relabel", str(_copy_set(b, t)), "--teacher", str(b / "teacher"),
                                                  *CPU, "--store", str(t / "set" / "images.safetensors"),
                                                  "--overwrite"], lambda b, t: [t / "set"]),
    "distill-output-is-buffer": (lambda b, t: ["distill", *DIGITS, "--method", "mtt", "--buffer", str(_buffer(t)),
                                               "--output", str(t / "buf"), "--overwrite"], lambda b, t: [t / "buf"]),
    # every other command, one read each
    "teacher-output-holds-cache": (lambda b, t: ["teacher", "train", *DIGITS, "--cache-dir", str(t / "c" / "cache"),
                                                 "--output", str(t / "c"), "--overwrite"], lambda b, t: []),
    "experts-output-is-config": (lambda b, t: (t.joinpath("x.yaml").write_text("seed: 0\n"),
                                               ["experts", "train", *DIGITS, "-c", str(t / "x.yaml"),
                                                "--output", str(t / "x.yaml")])[1], lambda b, t: [t / "x.yaml"]),
    "experts-output-holds-data-root": (lambda b, t: ["experts", "train", *DIGITS, "--data-root", str(t / "e" / "d"),
                                                     "--output", str(t / "e")], lambda b, t: []),
    "distill-output-is-dynamics": (lambda b, t: ["distill", *DIGITS, "--method", "el2n-easy", "--dynamics-path",
                                                 str(_buffer(t)), "--output", str(t / "buf"), "--overwrite"],
                                   lambda b, t: [t / "buf"]),
    "distill-parts-is-buffer": (lambda b, t: ["distill", *DIGITS, "--method", "mtt", "--buffer",
                                              str(_buffer(t)).replace("buf", "o.parts"),
                                              "--output", str(t / "o")], lambda b, t: []),
    "distill-output-holds-plugin": (lambda b, t: ["--plugin", str(_plugin_file(t)), "distill", *DIGITS,
                                                  "--output", str(t / "plug"), "--overwrite"],
                                    lambda b, t: [t / "plug"]),
    "evaluate-output-is-label-store": (lambda b, t: ["evaluate", str(b / "set"), *DIGITS, "--labels", "stored",
                                                     "--label-store", str(_buffer(t)), "--output", str(t / "buf"),
                                                     "--overwrite"], lambda b, t: [t / "buf"]),
    "evaluate-log-dir-is-set": (lambda b, t: ["evaluate", str(_copy_set(b, t)), *DIGITS, "--log", "csv",
                                              "--log-dir", str(t / "set"), "--output", str(t / "ev")],
                                lambda b, t: [t / "set"]),
    "study-output-holds-teacher": (lambda b, t: ["study", "hard-truths", *DIGITS, "--teacher",
                                                 str(_teacher_copy(b, t)), "--output-dir", str(t / "tdir")],
                                   lambda b, t: [t / "tdir"]),
    "dcs-output-is-teacher-json": (lambda b, t: ["dcs", *DIGITS, "--teacher", str(_teacher_copy(b, t)),
                                                 "--output", str(t / "tdir" / "teacher.json")],
                                   lambda b, t: [t / "tdir"]),
    "export-output-is-set": (lambda b, t: ["export", str(_copy_set(b, t)), "--format", "safetensors",
                                           "--output", str(t / "set"), "--overwrite"], lambda b, t: [t / "set"]),
}

#: commands that read nothing a write could reach (merge's parts sit beside its output; inspect writes nothing;
#: demo reads nothing of the user's) — listed so that a new command must be placed in one table or the other
NOTHING_TO_DESTROY = {"merge", "inspect", "demo"}

for _id, (_argv, _protect) in WALK.items():
    CASES[f"io-{_id}"] = (_cli(_argv, _protect), "destroy that input")


# -- issue #25 (B, D): what `import` reads passes the checks of a set ddkit wrote ------------------------------


def _st_source(images=None, labels=None, header=None, **soft):
    """A safetensors source for `import` (20 digits-shaped images, 2 per class) with edits."""
    def make(base: Path, tmp: Path):
        g = torch.Generator().manual_seed(1)
        t = {"images": torch.rand(20, 1, 8, 8, generator=g) if images is None else images,
             "labels": torch.arange(10).repeat_interleave(2) if labels is None else labels, **soft}
        save_file(t, str(tmp / "src.safetensors"), metadata=header)
        return ["import", str(tmp / "src.safetensors"), "--dataset", "digits", *CPU, "--output", str(tmp / "o")], \
            [tmp / "src.safetensors"]
    return make


def _pt_source(images=None, labels=None, edit=None):
    """A DD-Ranking source (images.pt + labels.pt) for `import`."""
    def make(base: Path, tmp: Path):
        src = tmp / "dd"
        src.mkdir()
        g = torch.Generator().manual_seed(2)
        torch.save(torch.randn(20, 1, 8, 8, generator=g) * 0.3 if images is None else images, src / "images.pt")
        torch.save(torch.arange(10).repeat_interleave(2) if labels is None else labels, src / "labels.pt")
        if edit is not None:
            edit(src)
        return ["import", str(src), "--dataset", "digits", *CPU, "--output", str(tmp / "o")], [src]
    return make


def _st_bytes(edit: Callable[[bytes], bytes]):
    """A safetensors source whose bytes are edited after writing (truncated, lying header, …)."""
    def make(base: Path, tmp: Path):
        argv, protect = _st_source()(base, tmp)
        p = tmp / "src.safetensors"
        p.write_bytes(edit(p.read_bytes()))
        return argv, protect
    return make


def _lying_header(b: bytes) -> bytes:
    n = int.from_bytes(b[:8], "little")
    head = json.loads(b[8:8 + n])
    head["images"]["shape"] = [40, 1, 8, 8]  # twice the bytes the data holds
    new = json.dumps(head).encode().ljust(n)
    return b[:8] + new[:n] + b[8 + n:] if len(new) <= n else len(new).to_bytes(8, "little") + new + b[8 + n:]


def _wrong_dtype(b: bytes) -> bytes:
    n = int.from_bytes(b[:8], "little")
    return b[:8] + b[8:8 + n].replace(b'"F32"', b'"F64"') + b[8 + n:]


def _ragged_soft(src: Path) -> None:
    torch.save([torch.zeros(10)] * 19 + [torch.zeros(7)], src / "labels.pt")


IMPORTS = {
    "import-st-0-255-floats": (_st_source(images=torch.rand(20, 1, 8, 8) * 255), "--pixel-scale 255"),
    "import-st-float-labels": (_st_source(labels=torch.arange(20, dtype=torch.float32) / 2 + 0.7),
                               "is not a whole class index"),
    "import-st-nan-pixels": (_st_source(images=torch.full((20, 1, 8, 8), float("nan"))), "NaN or Inf"),
    "import-st-inf-pixels": (_st_source(images=torch.zeros(20, 1, 8, 8).index_fill_(0, torch.tensor([3]),
                                                                                   float("inf"))), "NaN or Inf"),
    "import-st-nan-soft": (_st_source(soft=torch.full((20, 10), float("nan"))), "NaN or Inf"),
    "import-st-soft-19-rows": (_st_source(soft=torch.zeros(19, 10)), "has 19 rows for 20 images"),
    "import-st-label-10": (_st_source(labels=torch.arange(20) // 2 + 1), "label 10 is outside 0..9"),
    "import-st-classes-a-dict": (_st_source(header={"classes": '{"a": 1}'}), "must be a JSON list of names"),
    "import-st-truncated": (_st_bytes(lambda b: b[:len(b) // 2]), "truncated"),
    "import-st-lying-header": (_st_bytes(_lying_header), "safetensors"),
    "import-st-wrong-dtype": (_st_bytes(_wrong_dtype), "safetensors"),
    "import-st-zip-disguised": (_cli(lambda b, t: (torch.save({"images": torch.zeros(2)}, t / "src.safetensors"),
                                                   ["import", str(t / "src.safetensors"), "--dataset", "digits",
                                                    *CPU, "--output", str(t / "o")])[1],
                                     lambda b, t: [t / "src.safetensors"]), "torch.save/zip archive"),
    "import-st-pickle-disguised": (_cli(lambda b, t: (t.joinpath("src.safetensors").write_bytes(
        pickle.dumps(_Evil(), protocol=2)), ["import", str(t / "src.safetensors"), "--dataset", "digits", *CPU,
                                            "--output", str(t / "o")])[1], lambda b, t: [t / "src.safetensors"]),
                                   "Python pickle"),
    "import-pt-negative-labels": (_pt_source(labels=torch.arange(20) // 2 - 1), "label -1 is outside 0..9"),
    "import-pt-nan-pixels": (_pt_source(images=torch.full((20, 1, 8, 8), float("nan"))), "NaN or Inf"),
    "import-pt-nan-soft": (_pt_source(labels=torch.full((20, 10), float("nan"))), "NaN or Inf"),
    "import-pt-ragged-soft": (_pt_source(edit=_ragged_soft), "labels are not one tensor"),
    "import-pt-evil-labels": (_pt_source(edit=lambda s: (s / "labels.pt").write_bytes(
        pickle.dumps(_Evil(), protocol=2))), "weights_only=True"),
    "import-pt-truncated-images": (_pt_source(edit=lambda s: (s / "images.pt").write_bytes(
        (s / "images.pt").read_bytes()[:100])), "images.pt: not a tensor file"),
}
CASES.update(IMPORTS)


# -- issue #25 (C): a plugin never replaces a built-in name, and its failures are one line naming it -----------


def _plugin_case(code: str):
    def make(base: Path, tmp: Path):
        p = tmp / "bad_plugin.py"
        p.write_text(code)
        return ["--plugin", str(p), "distill", *DIGITS, "--output", str(tmp / "out")], [p]
    return make


_ALIAS_RANDOM = """
from ddkit.plugins import register_method
from ddkit.methods.random import RandomConfig

@register_method("evil-random", config=RandomConfig, aliases=("random",))
def build(cfg):
    raise AssertionError("never built")
"""

PLUGINS = {
    "plugin-alias-shadows-random": (_plugin_case(_ALIAS_RANDOM), "alias 'random' is already taken"),
    "plugin-name-is-random": (_plugin_case(_ALIAS_RANDOM.replace('"evil-random"', '"Random"').replace(
        'aliases=("random",), ', "")), "registered twice"),
    "plugin-sys-exit-0": (_plugin_case("import sys\nsys.exit(0)\n"), "called sys.exit(0)"),
    "plugin-raises": (_plugin_case("raise RuntimeError('boom')\n"), "bad_plugin.py failed to import: RuntimeError"),
    "plugin-missing-module": (_plugin_case("import no_such_dependency_xyz\n"), "'no_such_dependency_xyz'"),
    "plugin-syntax-error": (_plugin_case("def f(:\n"), "syntax error at line 1"),
}
CASES.update(PLUGINS)


# -- issue #25 (D): label stores and expert buffers through the loader layer: one line naming the file --------


def _store_case(edit: Callable[[Path], None]):
    """A 2-epoch label store of the set (relabelled in-process), edited, then `evaluate --labels stored`."""
    def make(base: Path, tmp: Path):
        from ddkit.evaluate.stored import RelabelConfig, relabel
        from ddkit.teachers import load_teacher

        s = _copy_set(base, tmp)
        relabel(s, load_teacher(base / "teacher", device="cpu"), RelabelConfig(epochs=2, recipe="sre2l"),
                device="cpu", progress=False)
        edit(s / "fkd")
        argv = ["evaluate", str(s), *DIGITS, "--labels", "stored", "--regime", "slkd", "--recipe", "sre2l",
                "--epochs", "1", "--seeds", "1", "--output", str(tmp / "ev")]
        return argv, [s]
    return make


def _store_meta(**kw):
    def edit(store: Path) -> None:
        m = json.loads((store / "meta.json").read_text())
        for k, v in kw.items():
            if v is None:
                m.pop(k)
            else:
                m[k] = v
        (store / "meta.json").write_text(json.dumps(m))
    return edit


def _npy_other_shape(store: Path) -> None:
    np.save(store / "logits.npy", np.zeros((2, 20, 7), dtype=np.float16))


def _npy_objects(store: Path) -> None:
    np.save(store / "logits.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)


def _buffer_case(edit: Callable[[Path], None]):
    """A one-expert MLP buffer on digits (2 epochs, 5 images per class), edited, then `distill --method mtt`."""
    def make(base: Path, tmp: Path):
        from ddkit.teachers.experts import ExpertConfig, train_experts

        train = create_dataset("digits", split="train", progress=False)
        buf = tmp / "buf"
        train_experts(train, None, ExpertConfig(arch="mlp", num_experts=1, epochs=2, batch_size=16,
                                                dsa_strategy="none", subset_per_class=5, test_limit=0),
                      buf, device="cpu", progress=False)
        edit(buf)
        argv = ["distill", *DIGITS, "--method", "mtt", "--preset", "cpu", "--buffer", str(buf), "--model", "mlp",
                "--ipc", "1", "--max-start-epoch", "1", "--expert-epochs", "1", "--zca", "false",
                "--output", str(tmp / "out")]
        return argv, [buf]
    return make


def _buffer_json(**kw):
    def edit(buf: Path) -> None:
        h = json.loads((buf / "buffer.json").read_text())
        for k, v in kw.items():
            if v is None:
                h.pop(k)
            else:
                h[k] = v
        (buf / "buffer.json").write_text(json.dumps(h))
    return edit


def _evil_partial(base: Path, tmp: Path):
    """`experts train` resuming over a planted pickle where its partial file would be."""
    argv = ["experts", "train", *DIGITS, "--arch", "mlp", "--num-experts", "1", "--epochs", "2", "--batch-size", "16",
            "--dsa-strategy", "none", "--subset-per-class", "5", "--test-limit", "0", "--output", str(tmp / "buf")]
    assert main(argv) == 0
    (tmp / "buf" / "expert_0000.safetensors").unlink()
    (tmp / "buf" / ".expert_0000.partial.pt").write_bytes(pickle.dumps(_Evil(), protocol=2))
    return argv, [tmp / "buf"]


STORES_AND_BUFFERS = {
    "store-meta-no-fingerprint": (_store_case(_store_meta(images_fingerprint=None)),
                                  "lacks the key(s) images_fingerprint"),
    "store-meta-more-epochs": (_store_case(_store_meta(epochs_done=5, epochs=5)), "has shape (2, 20, 10), "
                               "expected (5, 20, 10)"),
    "store-meta-done-beyond-epochs": (_store_case(_store_meta(epochs_done=3)), "3 of 2 epochs done"),
    "store-logits-other-shape": (_store_case(_npy_other_shape), "logits.npy has shape (2, 20, 7)"),
    "store-logits-truncated": (_store_case(_truncate("logits.npy", 200)), "logits.npy is not a readable .npy array"
                               " (truncated"),
    "store-logits-objects": (_store_case(_npy_objects), "holds Python objects"),
    "store-meta-not-json": (_store_case(lambda st: (st / "meta.json").write_text("{oops")),
                            "meta.json is not valid JSON"),
    "mtt-expert-truncated": (_buffer_case(_truncate("expert_0000.safetensors", 300)),
                             "expert_0000.safetensors is truncated"),
    "mtt-expert-pickle": (_buffer_case(lambda b: (b / "expert_0000.safetensors").write_bytes(
        pickle.dumps(_Evil(), protocol=2))), "Python pickle"),
    "mtt-buffer-no-normalisation": (_buffer_case(_buffer_json(normalisation=None)),
                                    "lacks the key(s) normalisation"),
    "mtt-buffer-json-corrupt": (_buffer_case(lambda b: (b / "buffer.json").write_text("{")),
                                "buffer.json is not valid JSON"),
    "experts-resume-evil-partial": (_evil_partial, ".expert_0000.partial.pt: not a tensor file"),
}
CASES.update(STORES_AND_BUFFERS)


# -- issue #25 (E): YAML with size and alias limits --------------------------------------------------------


def _laughs(key: str) -> str:
    """A "billion laughs": eleven levels of nine aliases each, ending under an option ddkit knows."""
    text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    for i in range(1, 12):
        text += f"l{i}: &l{i} [{', '.join(['*a' if i == 1 else f'*l{i - 1}'] * 9)}]\n"
    return text + f"{key}: *l11\n"


YAMLS = {
    "yaml-laughs-classes": (_yaml_case(_laughs("classes"), _distill_out), "aliases expand to more than"),
    "yaml-laughs-epochs": (_yaml_case(_laughs("epochs"), lambda b, t: ["teacher", "train", *DIGITS, "--output",
                                                                       str(t / "t")]), "aliases expand to more than"),
    "yaml-laughs-ipcs": (_yaml_case(_laughs("ipcs"), lambda b, t: ["dcs", *DIGITS]), "aliases expand to more than"),
    "yaml-too-big": (_yaml_case("# " + "x" * (1 << 20) + "\nipc: 1\n", _distill_out), "more than a config holds"),
}
CASES.update(YAMLS)


CASES.update({  # #25 (7): a class named twice is refused for every command, naming the duplicate
    "teacher-classes-3-3": (_cli(lambda b, t: ["teacher", "train", *DIGITS, "--classes", "3,3", "--output",
                                               str(t / "t")]), "--classes names 3 more than once"),
    "distill-classes-1-1": (_cli(lambda b, t: [*_distill_out(b, t), "--classes", "1,1"]),
                            "--classes names 1 more than once"),
})


def test_battery_has_at_least_40_distinct_bad_inputs():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_with_one_line(case, base, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an evil pickle that did run would leave its marker here
    build, needle = CASES[case]
    argv, protect = build(base, tmp_path)
    _assert_refused(case, argv, [*protect, base], needle, tmp_path, capsys)


def _assert_refused(case: str, argv: List[str], protect: List[Path], needle: str, tmp_path: Path, capsys) -> None:
    """Exit 2, one stderr line holding `needle`, no traceback, every given file byte-identical, no leftovers."""
    before = {str(p): _snapshot(p) for p in protect}
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own exit, still one line (cli._Parser)
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (case, rc, err)
    assert len(lines) == 1 and lines[0].startswith("ddkit: error:"), (case, err)
    assert "Traceback" not in err
    assert needle in lines[0], (case, lines[0])
    assert {str(p): _snapshot(p) for p in protect} == before, f"{case} changed a file it was given"
    assert not (tmp_path / "MARKER-never-created").exists()
    # nothing half-made is left behind: outputs, an empty OUTPUT.parts/ (#25), writers' temporaries
    for name in ("out", "ev", "o", "t.safetensors", "t.json", "out.parts", "o.parts"):
        assert not (tmp_path / name).exists(), (case, name)
    left = [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert not left, (case, left)


def test_every_command_is_walked_by_the_io_rule():
    """The table walks every command that has flags; the rule's own table declares every command."""
    from ddkit.cli import SUBCOMMANDS
    from ddkit.safe_paths import READS, WRITES

    commands = {c for c, (_, build) in SUBCOMMANDS.items() if build is not None}
    walked = {i.split("-")[0] for i in WALK}
    assert commands == walked | NOTHING_TO_DESTROY, commands ^ (walked | NOTHING_TO_DESTROY)
    assert commands == set(READS) == set(WRITES)


def test_resuming_commands_may_read_their_own_record(tmp_path):
    """`experts train -c BUF/config.yaml --output BUF` resumes a buffer (experts have no --overwrite)."""
    import argparse

    from ddkit.safe_paths import check_paths

    check_paths(argparse.Namespace(command="experts", output=str(tmp_path / "buf"),
                                   config=str(tmp_path / "buf" / "config.yaml")))
    with pytest.raises(Exception, match="destroy that input"):  # a command that may --overwrite: refused
        check_paths(argparse.Namespace(command="distill", output=str(tmp_path / "buf"),
                                       config=str(tmp_path / "buf" / "config.yaml")))


def test_relabel_default_store_inside_the_set_is_allowed(base, tmp_path):
    """The one declared exception: a label store is a new entry of its set (SET/fkd)."""
    import argparse

    from ddkit.safe_paths import check_paths

    s = _copy_set(base, tmp_path)
    check_paths(argparse.Namespace(command="relabel", distilled=str(s), teacher=str(base / "teacher")))
    check_paths(argparse.Namespace(command="relabel", distilled=str(s), store=str(s / "fkd2"), teacher=None))


# -- issue #25 (F): a full disk is one line and leaves nothing half-written; parts and --overwrite leftovers ----


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _safetensors_full(*_a, **_k):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                          '"No space left on device" })')


def _half_then_full(orig):
    """Path.write_bytes that writes half of a temporary file, then finds the disk full."""
    def write_bytes(self, data):
        if ".tmp-" in self.name:
            orig(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return orig(self, data)
    return write_bytes


DISK_FULL = {
    # the set's safetensors (safetensors' own writer: a SafetensorError before #25)
    "distill-set-save": ("safetensors.torch.save_file", lambda: _safetensors_full),
    # the first class part (Python's writer): the half part and the empty OUTPUT.parts/ go
    "distill-part": ("ddkit.distributed.os.fsync", lambda: _enospc),
    # a label store's arrays: no 0-byte logits.npy without meta
    "relabel-arrays": ("os.posix_fallocate", lambda: _enospc),
    # every atomic_write_bytes (records, report.html, meta.json): the temporary goes
    "export-record": ("pathlib.Path.write_bytes", lambda: _half_then_full(Path.write_bytes)),
}


def _disk_full_argv(case: str, base: Path, tmp: Path) -> Tuple[List[str], List[Path]]:
    if case.startswith("distill"):
        return ["distill", *DIGITS, "--ipc", "1", "--output", str(tmp / "out")], []
    if case.startswith("relabel"):
        s = _copy_set(base, tmp)
        return ["relabel", str(s), "--teacher", str(base / "teacher"), *CPU, "--epochs", "1"], [s]
    s = _copy_set(base, tmp)
    return ["export", str(s), "--format", "safetensors", "--output", str(tmp / "o")], [s]


@pytest.mark.parametrize("case", sorted(DISK_FULL))
def test_full_disk_is_one_line_and_leaves_nothing(case, base, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, protect = _disk_full_argv(case, base, tmp_path)
    target, fake = DISK_FULL[case]
    monkeypatch.setattr(target, fake())
    if case == "distill-set-save":  # the classes were finished before the set's save failed: they are kept …
        argv, parts = [*argv[:-1], str(tmp_path / "sv")], tmp_path / "sv.parts"
    _assert_refused(case, argv, [*protect, base], "No space left on device", tmp_path, capsys)
    if case.startswith("relabel"):
        assert not (tmp_path / "set" / "fkd").exists()
    if case == "distill-set-save":  # … and the same command, once there is space, reuses them without --resume
        assert parts.is_dir() and not (tmp_path / "sv").exists()
        monkeypatch.undo()
        assert main(argv) == 0 and (tmp_path / "sv" / "images.safetensors").is_file()


def test_refused_distill_leaves_no_parts_and_a_finished_run_reruns(tmp_path, capsys):
    """#25 (16): a refused run removes the OUTPUT.parts/ it made; the same command after deleting the set
    reuses the finished run's parts (no --resume needed) and gives the same bytes."""
    out = tmp_path / "out"
    argv = ["distill", *DIGITS, "--ipc", "2", "--output", str(out)]
    assert main(argv) == 0
    first = (out / "images.safetensors").read_bytes()
    shutil.rmtree(out)
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "images.safetensors").read_bytes() == first
    capsys.readouterr()
    assert main(["distill", *DIGITS, "--ipc", "500", "--max-per-class", "3", "--output", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o.parts").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["export", "distill"])
def test_overwrite_onto_a_file_leaves_no_old_copy(command, base, tmp_path):
    """#25 (17): --overwrite onto an existing *file* replaced it but left .NAME.old-PID behind."""
    target = tmp_path / "target"
    target.write_text("a file in the way")
    argv = (["export", str(base / "set"), "--format", "safetensors", "--output", str(target), "--overwrite"]
            if command == "export" else ["distill", *DIGITS, "--ipc", "1", "--output", str(target), "--overwrite"])
    assert main(argv) == 0
    assert target.is_dir()
    assert not [p.name for p in tmp_path.iterdir() if ".old-" in p.name or ".tmp-" in p.name]


def test_unsharded_run_merged_by_a_concurrent_writer_says_saved(tmp_path, capsys, monkeypatch):
    """#25 (19): two writers of one unsharded run; the loser found the set merged by the other and used to
    print "shard done; merge with `ddkit merge`" although nothing was left to do."""
    import ddkit.distributed as dist

    real = dist._try_merge_once

    def other_writer_merges_first(parts, output, overwrite):
        real(parts, output, overwrite)  # the concurrent run wins the merge …
        return None  # … so this one finds it done
    monkeypatch.setattr(dist, "_try_merge_once", other_writer_merges_first)
    assert main(["distill", *DIGITS, "--ipc", "1", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "merged by a concurrent run" in out and "ddkit merge" not in out
    assert (tmp_path / "out" / "images.safetensors").is_file()


def test_full_disk_while_writing_a_report_leaves_no_temporary(tmp_path, monkeypatch):
    """#25 (15): `.report.html.tmp-PID` stayed behind when the disk filled during evaluate's report."""
    from ddkit.html_report import HtmlReport

    monkeypatch.setattr(Path, "write_bytes", _half_then_full(Path.write_bytes))
    with pytest.raises(OSError, match="No space left"):
        HtmlReport("x").write(tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_evaluate_writes_its_page_removes_the_half_written_folder(base, tmp_path, capsys, monkeypatch):
    """#25 (15): a full disk after the evaluation's folder was renamed into place (record, report.html) left a
    half-written output folder; now it is one line and no folder."""
    import ddkit.html_report

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddkit.html_report, "write_eval_html", _enospc)
    s = _copy_set(base, tmp_path)
    argv = ["evaluate", str(s), *DIGITS, "--regime", "hl", "--epochs", "1", "--seeds", "1", "--student-width", "8",
            "--no-random", "--output", str(tmp_path / "ev")]
    _assert_refused("evaluate-report", argv, [s, base], "No space left on device", tmp_path, capsys)
    assert not (tmp_path / "ev").exists()
