"""The Teacher object and batched inference helpers shared with the evaluator."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ddkit.data.base import ImageDataset, to_float
from ddkit.data.stream import STREAM_CHUNK, iter_chunks
from ddkit.models import feature_extractor
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, autocast, make_generator


class Teacher:
    """A frozen classifier with the class list, normalisation and input size it was trained with.

    Inputs are images in [0, 1] (float) or uint8; the teacher normalises them itself.

    Attributes:
        model: the network, in eval mode with requires_grad False.
        arch: model name understood by `ddkit.models.create_model`.
        arch_kw: extra create_model kwargs (e.g. {"width": 64}) needed to rebuild the net.
        classes, mean, std, image_size, channels: what the weights expect.
        meta: free-form facts (dataset, accuracy, recipe, source path).
    """

    def __init__(self, model: nn.Module, arch: str, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], image_size: int, channels: int = 3, meta: Optional[Dict[str, Any]] = None,
                 arch_kw: Optional[Dict[str, Any]] = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.arch = arch
        self.arch_kw = dict(arch_kw or {})
        self.classes: List[str] = list(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.meta: Dict[str, Any] = dict(meta or {})
        self._extractors: Dict[str, nn.Module] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: Union[str, torch.device]) -> "Teacher":
        """Move the weights to `device` (in place) and return self."""
        self.model.to(device)
        self._extractors.clear()  # extractors share parameters, but rebuild to be safe after a move
        return self

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel; uint8 input is converted to [0, 1] first."""
        x = to_float(x01) if x01.dtype == torch.uint8 else x01
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def logits(self, x01: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Logits for [0,1] images; grad=True lets gradients flow to the input (weights stay frozen)."""
        with torch.set_grad_enabled(grad):
            return self.model(self.normalize(x01))

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return self.logits(x01, grad=False)

    def features(self, x01: torch.Tensor, layer: str, grad: bool = False) -> torch.Tensor:
        """Output of `layer` (see ddkit.models.feature_extractor); nothing after it is computed."""
        ext = self._extractors.get(layer)
        if ext is None:
            ext = self._extractors[layer] = feature_extractor(self.model, layer).eval()
        with torch.set_grad_enabled(grad):
            return ext(self.normalize(x01))

    def __repr__(self) -> str:
        return (f"Teacher({self.arch}, {self.num_classes} classes, {self.channels}×{self.image_size}² px, "
                f"mean={self.mean}, std={self.std})")


def _resolve(model_or_teacher: Union[nn.Module, Teacher], mean: Optional[Sequence[float]],
             std: Optional[Sequence[float]], device: Optional[Union[str, torch.device]]):
    if isinstance(model_or_teacher, Teacher):
        model = model_or_teacher.model
        mean = model_or_teacher.mean if mean is None else mean
        std = model_or_teacher.std if std is None else std
    else:
        model = model_or_teacher
    if mean is None or std is None:
        raise ValueError("predict_logits needs mean and std for a plain nn.Module")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)  # no-op when already there; documented: the model moves to `device`
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    return model, m, s, dev


def _batched_logits(model: nn.Module, images: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
                    dev: torch.device, batch_size: int) -> Iterator[torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(dev):
            for i in range(0, len(images), batch_size):
                x = to_float(images[i:i + batch_size].to(dev, non_blocking=True))
                yield model((x - m) / s).float()
    finally:
        model.train(was_training)


def predict_logits(model_or_teacher: Union[nn.Module, Teacher], images: torch.Tensor,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   device: Optional[Union[str, torch.device]] = None, batch_size: int = 512) -> torch.Tensor:
    """Float32 logits (on CPU) for uint8 or [0,1] float images, batched, no_grad, bf16 autocast on CUDA.

    A Teacher supplies its own mean/std; a plain module needs them. The model is put in eval mode
    for the call (its mode is restored) and moved to `device` (default: where its weights are).
    """
    model, m, s, dev = _resolve(model_or_teacher, mean, std, device)
    if isinstance(model_or_teacher, Teacher) and mean is None and std is None:
        # a teacher is seen through the one frozen view (its weights now live on `dev`: no copy is made)
        ft = FrozenTeacher(model_or_teacher, dev, amp=True, channels_last=False, max_batch=batch_size)
        return ft.logits(images).cpu()
    outs = [z.cpu() for z in _batched_logits(model, images, m, s, dev, batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, 0)


def _chunk_for(batch_size: int) -> int:
    # a multiple of the batch near STREAM_CHUNK, so chunked batches are the batches of one pass
    return batch_size * max(1, -(-STREAM_CHUNK // batch_size))


def predict_dataset(model_or_teacher: Union[nn.Module, Teacher], ds: ImageDataset,
                    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                    device: Optional[Union[str, torch.device]] = None, batch_size: int = 512) -> torch.Tensor:
    """`predict_logits` over a whole split, read in chunks: a file-backed split is never decoded whole (only the
    N×K logits are kept); the logits are those of one pass over `ds.images`."""
    parts = [predict_logits(model_or_teacher, x, mean, std, device, batch_size)
             for _, x in iter_chunks(ds, _chunk_for(batch_size))]
    return torch.cat(parts) if parts else torch.empty(0, 0)


def accuracy(model: Union[nn.Module, Teacher], ds: ImageDataset, mean: Optional[Sequence[float]] = None,
             std: Optional[Sequence[float]] = None, device: Optional[Union[str, torch.device]] = None,
             batch_size: int = 512) -> float:
    """Top-1 accuracy (a fraction) of `model` on all of `ds`; mean/std default to the teacher's, then ds's.

    The split is read in chunks (`iter_chunks`): a file-backed split (ImageNet) is decoded a chunk at a time,
    never held whole; the logits of each batch are the same either way."""
    if not isinstance(model, Teacher):
        mean = ds.mean if mean is None else mean
        std = ds.std if std is None else std
    net, m, s, dev = _resolve(model, mean, std, device)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    for start, images in iter_chunks(ds, _chunk_for(batch_size)):
        for i, z in enumerate(_batched_logits(net, images, m, s, dev, batch_size)):
            a = start + i * batch_size
            correct += (z.argmax(1) == ds.labels[a:a + len(z)].to(dev)).sum()
    return int(correct) / max(1, len(ds))


def _recorded_accuracy(teacher: Teacher, test: ImageDataset) -> Optional[float]:
    """The test accuracy the teacher's json records for this very dataset (a fraction), else None."""
    acc = teacher.meta.get("accuracy")
    same = bool(test.name) and teacher.meta.get("dataset") == test.name
    if not same or isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 < acc <= 1.0:
        return None
    return float(acc)


def _per_class_check(teacher: Teacher, y: torch.Tensor, pred: torch.Tensor, chance: float, k: int,
                     skip: str) -> None:
    """Classes (≥ 20 sampled images) under a third of the median class accuracy, when that median is
    ≥ 2× chance: refused when they are mostly predicted as each other (a permutation among them: classes
    swapped in the classifier), a warning otherwise (an undertrained teacher is weak on some classes)."""
    import warnings

    counts = torch.bincount(y, minlength=teacher.num_classes)
    acc = {c: float((pred[y == c] == c).float().mean()) for c in range(teacher.num_classes) if counts[c] >= 20}
    if len(acc) < 3:
        return
    median = sorted(acc.values())[len(acc) // 2]
    low = {c for c, a in acc.items() if a < median / 3} if median >= 2 * chance else set()
    if not low:
        return
    to = {c: int(torch.bincount(pred[y == c], minlength=teacher.num_classes).argmax()) for c in low}
    share = {c: float((pred[y == c] == to[c]).float().mean()) for c in low}
    swapped = {c for c in low if to[c] in low and to[c] != c and share[c] >= 0.5}
    swapped = {c for c in swapped if to[c] in swapped}
    if swapped and {to[c] for c in swapped} == swapped:
        pairs = ", ".join(f"{teacher.classes[c]!r}→{teacher.classes[to[c]]!r} {share[c]:.0%}" for c in sorted(swapped))
        raise DDKitError(f"teacher {teacher.arch}: on {k} test images classes are predicted as each other ({pairs}) "
                         f"while the median class is right {median:.0%} of the time: classes swapped in the "
                         f"checkpoint{skip}")
    names = ", ".join(f"{teacher.classes[c]!r} {acc[c]:.0%}" for c in sorted(low)[:5])
    warnings.warn(f"teacher {teacher.arch}: class(es) {names} far below the median class accuracy {median:.0%}; "
                  f"a weak teacher for them (train longer?)", stacklevel=3)


def check_teacher(teacher: Teacher, test: ImageDataset, n: int = 512, min_ratio: float = 2.0,
                  device: Optional[Union[str, torch.device]] = None, seed: int = 0) -> float:
    """Accuracy on a seeded sample of `n` real test images; raise DDKitError when the teacher is not what it claims.

    Three checks, each refused with one line: (1) near chance: below min_ratio × chance, capped at halfway
    between chance and 100 % so 2-class sets stay passable (almost always a class-order mismatch between
    checkpoint and dataset, RDED issues #3/#4/#6); (2) far below the accuracy its own json records for
    this dataset (wrong mean/std, a damaged or swapped checkpoint): more than max(5 points, 4 binomial
    standard errors of the sample); (3) classes swapped in the classifier: classes far below the rest
    that are mostly predicted as each other (see _per_class_check; far below alone is a warning).
    Returns the accuracy.
    """
    if teacher.num_classes != test.num_classes:
        raise DDKitError(f"teacher has {teacher.num_classes} classes but {test.name or 'the test set'} has "
                         f"{test.num_classes}; use a teacher trained on this dataset")
    k = min(n, len(test))
    idx = torch.randperm(len(test), generator=make_generator(seed, "check_teacher"))[:k]
    labels = test.labels[idx].cpu()
    logits = predict_logits(teacher, test.get(idx), device=device)  # only these k images (decoded when file-backed)
    hit = (logits.argmax(1) == labels).float()
    acc = float(hit.mean()) if k else 0.0
    chance = 1.0 / test.num_classes
    bar = min(min_ratio * chance, (1.0 + chance) / 2)
    skip = "; pass --skip-teacher-check to use it anyway"
    if acc < bar:
        raise DDKitError(f"teacher {teacher.arch} gets {acc:.1%} on {k} {test.name or 'test'} images, below "
                         f"{bar:.1%} ({min_ratio:g}× chance): the usual cause is a class-order mismatch between "
                         f"checkpoint and dataset (else wrong normalisation or arch)")
    recorded = _recorded_accuracy(teacher, test)
    if recorded is not None:
        tol = max(0.05, 4 * math.sqrt(max(recorded * (1 - recorded), 1e-4) / max(k, 1)))
        if acc < recorded - tol:
            raise DDKitError(f"teacher {teacher.arch} gets {acc:.1%} on {k} {test.name} test images but its json "
                             f"records {recorded:.1%}: wrong mean/std in the json, or a damaged or altered "
                             f"checkpoint{skip}")
    _per_class_check(teacher, labels, logits.argmax(1), chance, k, skip)
    return acc
