"""The `score` step of deepcore_pair.py (issue #27): both sides' per-sample scores and IPC-k selections.

ddkit scores with its own recorder / feature code and registered methods; DeepCore's method classes
(PatrickZH/DeepCore@74ec709) run unmodified from the pinned checkout (common.official_repo), with `epochs=0` on the
committed teacher (GraNd, Entropy, Herding, k-center: its `finish_run` scores the network it is handed) or a
training run from ddkit's dynamics run-0 initial weights (Forgetting). The network reaches DeepCore as
`deepcore.nets.DDKitConvNet`, set here to `HandedConvNet`. One JSON per (method, side) under <runs>/score/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, DATA, ROOT, official_repo, read_json, write_json  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

TEACHER = ROOT / "bench" / "teachers" / "cifar10_jpeg75_convnet3_e30"
STATE: Dict[str, Any] = {}  # what HandedConvNet loads when DeepCore builds it (set before each DeepCore run)


def subset(a: argparse.Namespace):
    from ddkit.data import class_balanced_subset, create_dataset

    full = create_dataset(DATA, split="train", cache_dir=CACHE, progress=False)
    keep = []
    from ddkit.utils import make_generator
    for c in range(full.num_classes):  # the rule of class_balanced_subset, kept to name the full-split indices
        idx = full.class_indices(c)
        keep.append(idx[torch.randperm(len(idx), generator=make_generator(0, "max-per-class", c))[:a.per_class]])
    order = torch.sort(torch.cat(keep)).values
    ds = class_balanced_subset(full, a.per_class, seed=0)
    assert torch.equal(ds.labels, full.labels[order])
    return ds, order


class HandedConvNet(nn.Module):
    """ddkit's ConvNet behind DeepCore's network contract (constructor and attributes of deepcore/nets/*.py)."""

    def __init__(self, channel: int, num_classes: int, im_size: Any, record_embedding: bool = False,
                 no_grad: bool = False, pretrained: bool = False) -> None:
        super().__init__()
        from deepcore.nets.nets_utils import EmbeddingRecorder
        from ddkit.models import create_model

        self.net = create_model(STATE["arch"], num_classes, im_size[0], channel)
        self.net.load_state_dict(STATE["weights"])
        self.embedding_recorder = EmbeddingRecorder(record_embedding)
        self.no_grad = no_grad
        # DeepCore normalises with its CIFAR-10 mean/std; the network expects ddkit's (the same pixels).
        m_in, s_in = (torch.tensor(v).view(1, -1, 1, 1) for v in STATE["deepcore_norm"])
        m_out, s_out = (torch.tensor(v).view(1, -1, 1, 1) for v in STATE["ddkit_norm"])
        self.register_buffer("scale", s_in / s_out)
        self.register_buffer("shift", (m_in - m_out) / s_out)

    def get_last_layer(self) -> nn.Linear:
        return self.net.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.no_grad):
            h = self.embedding_recorder(self.net.embed(x * self.scale + self.shift))
            return self.net.classifier(h)


def deepcore_data(ds, order: torch.Tensor, runs: str):
    """DeepCore's own CIFAR10() (its transform and mean/std) on the handed pixels, cut to the same subset."""
    from deepcore.datasets import CIFAR10

    # the root is unused: the pixels are handed over
    channel, im_size, k, classes, mean, std, train, _ = CIFAR10(str(Path(runs) / "data"))
    train.data, train.targets = train.data[order.numpy()], train.targets[order]
    assert torch.equal(train.targets, ds.labels)
    args = SimpleNamespace(device="cpu", gpu=None, workers=0, print_freq=10_000, num_classes=k, channel=channel,
                           im_size=im_size, model="DDKitConvNet", selection_batch=125, selection_optimizer="SGD",
                           selection_lr=0.01, selection_momentum=0.9, selection_weight_decay=5e-4,
                           selection_nesterov=False, selection_test_interval=0, selection_test_fraction=1.0)
    return train, args, (mean, std)


def score(a: argparse.Namespace) -> None:
    """Both sides' scores and selections, one JSON per (method, side) under runs/score/."""
    from ddkit.methods import create_method
    from ddkit.methods.coresets_scores import compute_score
    from ddkit.methods.dynamics import Dynamics, DynamicsConfig, _Recorder, record_dynamics
    from ddkit.models import create_model, resolve_model_name
    from ddkit.teachers.io import load_teacher
    from ddkit.utils import derive_seed

    out = Path(a.runs) / "score"
    out.mkdir(parents=True, exist_ok=True)
    ds, order = subset(a)
    teacher = load_teacher(str(TEACHER), dataset=ds)
    frac = a.ipc / a.per_class

    def save(name: str, idx: Any, scores: Any, seconds: float, **extra: Any) -> None:
        doc = {"indices": [int(i) for i in np.asarray(idx)], "seconds": round(seconds, 3), **extra}
        if scores is not None:
            doc["scores"] = [float(v) for v in np.asarray(scores, dtype=np.float64)]
        write_json(out / f"{name}.json", doc)
        print(f"[deepcore_pair] {name}: {seconds:.1f} s", flush=True)

    def todo(name: str) -> bool:
        return name.split("-")[0] in a.methods.split(",") and not (out / f"{name}.json").is_file()

    def ddkit_set(method: str, **kw: Any):
        t = time.perf_counter()
        s = create_method(method, ipc=a.ipc, seed=0, **kw)(ds, teacher, device="cpu", progress=False)
        s.save(Path(a.runs) / "sets" / f"{method}-ddkit", overwrite=True, pngs=False)
        return s, time.perf_counter() - t

    # ddkit: the teacher as one record point (R = 1); GraNd/Entropy then go through the registered methods.
    dyn_dir = Path(a.runs) / "teacher_dynamics"
    if todo("grand-ddkit") or todo("entropy-ddkit"):
        t = time.perf_counter()
        m = teacher.model.eval()
        pt = _Recorder(m, ds.images, ds.labels, torch.tensor(teacher.mean).view(1, -1, 1, 1),
                       torch.tensor(teacher.std).view(1, -1, 1, 1), torch.device("cpu"), False, batch_size=500)()
        rec_s = time.perf_counter() - t
        one = torch.ones(1)
        Dynamics(pt["p_true"][None], pt["margin"][None], pt["correct"][None], pt["entropy"], pt["el2n"][None, None],
                 pt["grand"][None, None], ds.labels.clone(), one, one.clone(), dataset=f"{ds.name}/{ds.split}",
                 classes=list(ds.classes)).save(dyn_dir)
        for method in ("grand", "entropy"):
            s, sec = ddkit_set(method, dynamics_path=str(dyn_dir))
            save(f"{method}-ddkit", s.meta["source_indices"], pt[method], rec_s + sec, recorder_seconds=rec_s)
    if todo("herding-ddkit"):
        s, sec = ddkit_set("herding")
        save("herding-ddkit", s.meta["source_indices"], None, sec)
    if todo("kcenter-ddkit"):
        s, sec = ddkit_set("kcenter")
        save("kcenter-ddkit", s.meta["source_indices"], None, sec)
    arch = resolve_model_name(teacher.arch)
    if todo("forgetting-ddkit"):
        cfg = DynamicsConfig(arch=arch, epochs=a.forget_epochs, batch_size=125, lr=0.01, momentum=0.9,
                             weight_decay=5e-4, schedule="none", augment="none", seed=0, amp=False)
        t = time.perf_counter()
        dyn = record_dynamics(ds, cfg, "cpu", progress=True)
        rec_s = time.perf_counter() - t
        fdir = Path(a.runs) / "forgetting_dynamics"
        dyn.save(fdir)
        s, sec = ddkit_set("forgetting", dynamics_path=str(fdir))
        save("forgetting-ddkit", s.meta["source_indices"], compute_score("forgetting", dyn), rec_s + sec,
             recorder_seconds=rec_s, train_acc=dyn.meta["train_acc"])

    # DeepCore: its method classes, unmodified, on its own dataset object and its own selection code.
    with official_repo("DeepCore"):
        import deepcore.nets
        from deepcore import methods as dc
        from deepcore.methods.methods_utils import euclidean_dist

        dc_train, args, dc_norm = deepcore_data(ds, order, a.runs)
        deepcore.nets.DDKitConvNet = HandedConvNet  # the registry DeepCore builds `args.model` from
        # numpy 2 removed np.in1d (kcentergreedy.py calls it); np.isin is numpy's documented replacement (same
        # result on 1-D arrays). Set only for DeepCore's run.
        had_in1d = hasattr(np, "in1d")
        if not had_in1d:
            np.in1d = lambda ar1, ar2, **kw: np.isin(ar1, ar2, **kw).ravel()
        STATE.update(arch=arch, deepcore_norm=dc_norm, ddkit_norm=(teacher.mean, teacher.std),
                     weights=teacher.model.state_dict())

        def run(name: str, cls: Any, fraction: float, seed: int = 0, **kw: Any) -> None:
            if not todo(name):
                return
            t = time.perf_counter()
            res = cls(dc_train, args, fraction, seed, specific_model="DDKitConvNet", **kw).select()
            sc = res.get("scores")
            if isinstance(sc, list):  # Uncertainty with balance: one array per class, back to dataset order
                full = np.zeros(len(dc_train.targets))
                for c, v in enumerate(sc):
                    full[(dc_train.targets == c).numpy()] = v
                sc = full
            elif isinstance(sc, torch.Tensor):
                sc = sc.cpu().numpy()
            save(name, res["indices"], sc, time.perf_counter() - t)

        run("grand-deepcore", dc.GraNd, frac, epochs=0, repeat=1, balance=True)
        run("entropy-deepcore", dc.Uncertainty, frac, epochs=0, selection_method="Entropy", balance=True)
        run("herding-deepcore", dc.Herding, frac, epochs=0, balance=True)
        # Textbook herding through DeepCore's own loop: its argmax over the NEGATED distance is an argmin.
        run("herding-deepcore-argmin", dc.Herding, frac, epochs=0, balance=True,
            metric=lambda x, y: -euclidean_dist(x, y))
        run("kcenter-deepcore", dc.kCenterGreedy, frac, epochs=0, balance=True, torchvision_pretrain=False)
        if todo("kcenter-deepcore-start"):  # the same first centre as ddkit's (its pick 0 of each class)
            first = np.asarray(read_json(out / "kcenter-ddkit.json")["indices"]).reshape(ds.num_classes, a.ipc)[:, 0]
            run("kcenter-deepcore-start", dc.kCenterGreedy, (a.ipc - 1) / a.per_class, epochs=0, balance=True,
                torchvision_pretrain=False, already_selected=[int(i) for i in first])
        with torch.random.fork_rng(devices=[]):  # ddkit's dynamics run-0 initial weights, for both sides
            torch.manual_seed(derive_seed(0, "dynamics-init", 0))
            init = create_model(arch, ds.num_classes, ds.image_size, ds.channels).state_dict()
        STATE.update(weights=init, ddkit_norm=(ds.mean, ds.std))
        run("forgetting-deepcore", dc.Forgetting, frac, epochs=a.forget_epochs, balance=True)
        if a.floor:
            run("forgetting-deepcore-s5", dc.Forgetting, frac, seed=5, epochs=a.forget_epochs, balance=True)
        if not had_in1d:
            del np.in1d
