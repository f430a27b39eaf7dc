"""The streamed paths of file-backed (ImageNet-layout) splits give what the in-memory paths give.

Every stage that reads a whole split reads a FileImageDataset a chunk or a batch at a time (`ddkit.data.stream`);
these tests compare each streamed result with the same computation on `materialize()` of the same split, and
check the chunked staging of large float sets against the rule it implements.
"""
from __future__ import annotations

import pytest
import torch

from ddkit.data import FileImageDataset, create_dataset
from ddkit.data.stream import DeviceBatches, iter_chunks, prefetch
from ddkit.evaluate.evaluator import class_scorer, exact_uint8, stage_images
from ddkit.models import create_model
from ddkit.teachers import TeacherConfig, accuracy, check_teacher, predict_dataset, train_teacher
from ddkit.utils import DDKitError
from tests.conftest import make_imagenet_layout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = make_imagenet_layout(tmp_path_factory.mktemp("inet") / "imagenette2", train=10, val=7)
    cache = tmp_path_factory.mktemp("cache")
    kw = dict(root=root, image_size=16, cache_dir=cache)
    train, test = create_dataset("imagenette", **kw), create_dataset("imagenette", split="test", **kw)
    assert isinstance(train, FileImageDataset) and isinstance(test, FileImageDataset)
    return train, test


def test_chunks_and_batches_match_the_materialized_split(splits):
    train, _ = splits
    mem = train.materialize(progress=False)
    got = list(iter_chunks(train, 7))
    assert [a for a, _ in got] == list(range(0, len(train), 7))
    assert torch.equal(torch.cat([x for _, x in got]), mem.images)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    streamed = list(DeviceBatches(train, "cpu").epoch(order, 8, 3))
    held = list(DeviceBatches(mem, "cpu").epoch(order, 8, 3))
    assert DeviceBatches(train, "cpu").images is None and DeviceBatches(mem, "cpu").images is not None
    assert len(streamed) == 3
    for (i1, x1), (i2, x2) in zip(streamed, held):
        assert torch.equal(i1, i2) and torch.equal(x1, x2) and torch.equal(x1, mem.images[i1])
    assert [len(x) for x in prefetch(train, [torch.tensor([0, 1]), torch.tensor([5])])] == [2, 1]


def test_streamed_test_scoring_equals_in_memory(splits):
    train, test = splits
    torch.manual_seed(0)
    net = create_model("convnet-d1", 3, 16, 3, width=8)
    mem = test.materialize(progress=False)
    a_file = accuracy(net, test, batch_size=4)  # 4 does not divide the 21 images: a ragged last batch
    assert a_file == accuracy(net, mem, batch_size=4)
    assert torch.equal(predict_dataset(net, test, test.mean, test.std, batch_size=5),
                       predict_dataset(net, mem, mem.mean, mem.std, batch_size=5))
    sink_f, sink_m = [None], [None]
    s_file = class_scorer(test, test.mean, test.std, torch.device("cpu"), 4, sink_f)(net)
    s_mem = class_scorer(mem, mem.mean, mem.std, torch.device("cpu"), 4, sink_m)(net)
    assert s_file == s_mem == a_file and sink_f[0] == sink_m[0] and len(sink_f[0]) == 3


def test_teacher_trains_and_checks_on_a_file_backed_split(splits):
    train, test = splits
    cfg = TeacherConfig(arch="convnet-d1", arch_kw={"width": 8}, epochs=2, batch_size=8, lr=0.05)
    t_file, m_file = train_teacher(train, test, cfg, device="cpu", progress=False)
    t_mem, m_mem = train_teacher(train.materialize(progress=False), test.materialize(progress=False), cfg,
                                 device="cpu", progress=False)
    # the same batches in the same order: the streamed teacher is the in-memory one
    for (k, a), b in zip(t_file.model.state_dict().items(), t_mem.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert m_file["test_acc"] == m_mem["test_acc"]
    assert check_teacher(t_file, test, n=9, min_ratio=0.0) == check_teacher(t_mem, test.materialize(progress=False),
                                                                             n=9, min_ratio=0.0)


def test_exact_uint8_is_checked_chunk_by_chunk():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (10, 3, 4, 4), generator=g, dtype=torch.uint8)
    exact = u8.float() / 255
    assert exact_uint8(exact, chunk=3)
    for i, bad in ((9, 0.5 / 255), (4, -1.0)):  # one off-grid value in the last / a middle chunk
        x = exact.clone()
        x[i, 1, 2, 3] += bad
        assert not exact_uint8(x, chunk=3) and not exact_uint8(x, chunk=100)
    high = exact.clone()
    high[0, 0, 0, 0] = 2.0  # on the k/255 grid (510/255) but out of range
    assert not exact_uint8(high, chunk=3)


@pytest.mark.parametrize("exact", [True, False])
def test_chunked_staging_matches_the_one_shot_conversion(monkeypatch, exact):
    import ddkit.evaluate.evaluator as ev

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (11, 3, 4, 4), generator=g, dtype=torch.uint8).float() / 255
    if not exact:
        x = x + 1e-3 * torch.rand(x.shape, generator=g)
    monkeypatch.setattr(ev, "_STAGE_LIMIT_BYTES", 16)  # every set counts as large here
    meta = torch.device("meta")  # not "cpu" (which always stages as is), and allocates nothing
    staged = stage_images(x, meta, chunk=4)
    assert staged.dtype == (torch.uint8 if exact else torch.float16) and staged.shape == x.shape
    # the values: the same chunked loop into a CPU buffer equals the one-shot rule it replaces
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: torch.zeros(*a, **k))
    got = stage_images(x, meta, chunk=4)
    want = (x * 255).round().to(torch.uint8) if exact else x.half()
    assert torch.equal(got, want)


def test_zca_on_a_large_file_backed_split_refuses_with_its_size(splits, tmp_path):
    from ddkit.teachers.experts import _zca_rows

    train, _ = splits
    big = FileImageDataset(train.files, train.labels, train.classes, train.mean, train.std, "imagenet", "train",
                           image_size=224)
    with pytest.raises(DDKitError, match=r"150528×150528 float64 covariance \(181 GB\).*without --zca"):
        _zca_rows(big)
    rows = _zca_rows(train)
    assert len(rows) == len(train) and torch.equal(rows[2:5], train.get(torch.arange(2, 5)))


def test_stored_labels_read_the_evaluators_staged_copy(tmp_path, monkeypatch):
    """`--labels stored` keeps one copy of the set per device: the store's views read the evaluator's staged copy."""
    import ddkit.evaluate.evaluator as ev
    from ddkit.data.base import ImageDataset
    from ddkit.distilled import DistilledSet
    from ddkit.evaluate import EvalConfig, evaluate
    from ddkit.evaluate.stored import RelabelConfig, StoredLabels, relabel
    from ddkit.teachers import Teacher

    g = torch.Generator().manual_seed(0)
    classes = ["a", "b", "c"]
    root = tmp_path / "set"
    DistilledSet(torch.rand(6, 3, 8, 8, generator=g), torch.arange(3).repeat_interleave(2), classes, (0.5,) * 3,
                 (0.25,) * 3, meta={"method": "toy"}).save(root, pngs=False)
    teacher = Teacher(create_model("convnet-d1", 3, 8, 3, width=4), "convnet-d1", classes, (0.5,) * 3, (0.25,) * 3, 8)
    store = relabel(root, teacher, RelabelConfig(recipe="sre2l", epochs=2, seed=1), device="cpu", progress=False)
    test = ImageDataset(torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8),
                        torch.arange(3).repeat(2), classes, (0.5,) * 3, (0.25,) * 3, "toy", "test")
    staged, used = [], []
    real_stage, real_use = ev.stage_images, StoredLabels.use_images
    monkeypatch.setattr(ev, "stage_images", lambda x, d, **k: staged.append(real_stage(x, d, **k)) or staged[-1])
    monkeypatch.setattr(StoredLabels, "use_images", lambda self, im: used.append(self) or real_use(self, im))
    cfg = EvalConfig(recipe="sre2l", regime="slkd", labels="stored", label_store=str(store.path), mix="none",
                     epochs=1, seeds=1, student="convnet-d1", student_width=4)
    evaluate(DistilledSet.load(root), test, cfg, device="cpu", progress=False)
    assert len(staged) == 1 and len(used) == 1 and used[0].store.images is staged[0]
