"""FKD-style label store: views replay from the seed for any batch, top-k keeps the top-k, sizes match."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ddkit.augment import Compose, Flip, Normalize, RandomResizedCrop
from ddkit.labels import LabelStore, build_label_store, label_store_nbytes
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError

N, K, S, E = 12, 6, 16, 3


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, S, S, generator=g)
    torch.manual_seed(0)
    net = create_model("convnet-d2", K, S, width=8)
    teacher = Teacher(net, "convnet-d2", [f"c{i}" for i in range(K)], (0.5,) * 3, (0.25,) * 3, S)
    return images, teacher


def aug():
    return Compose([RandomResizedCrop(S, scale=(0.3, 1.0)), Flip()])


@pytest.fixture(scope="module")
def full(setup, tmp_path_factory):
    images, teacher = setup
    return build_label_store(images, teacher, aug(), E, 7, tmp_path_factory.mktemp("full") / "s", batch_size=5,
                             device="cpu", progress=False)


@pytest.fixture(scope="module")
def top(setup, tmp_path_factory):
    images, teacher = setup
    return build_label_store(images, teacher, aug(), E, 7, tmp_path_factory.mktemp("top") / "s", topk=2,
                             batch_size=4, device="cpu", progress=False)


def test_views_identical_for_any_batch_composition(full, setup):
    images, _ = setup
    store = LabelStore.open(full.path, images=images, aug=aug())  # fresh process-like state: no caches
    for e in range(E):
        x_all, y_all = store.views(e, torch.arange(N))
        for idx in ([5, 2, 9], [11], [0, 0, 3], list(range(N))[::-1]):
            x, y = full.views(e, idx)
            assert torch.equal(x, x_all[idx]) and torch.equal(y, y_all[idx])
    x0, _ = store.views(0, [4])
    x1, _ = store.views(1, [4])
    assert not torch.equal(x0, x1)  # epochs draw different views
    assert store.params(2, [3])["0.box"].shape == (1, 4)


def test_stored_logits_are_the_teacher_on_the_regenerated_views(full, setup):
    _, teacher = setup
    norm = Normalize(teacher.mean, teacher.std)
    for e in range(E):
        x, y = full.views(e, [1, 7, 10])
        with torch.no_grad():
            fresh = teacher.model(norm.apply(x, {}))
        torch.testing.assert_close(y, fresh.half().float(), atol=2e-3, rtol=2e-3)


def test_two_batch_sizes_and_dataloader_workers_read_the_same(full, setup):
    images, _ = setup
    store = LabelStore.open(full.path, images=images, aug=aug())
    for bs in (1, 5):
        ys = torch.cat([store.logits(1, torch.arange(a, min(a + bs, N))) for a in range(0, N, bs)])
        assert torch.equal(ys, store.logits(1, torch.arange(N)))
    ref_x, ref_y = store.views(2, torch.arange(N))
    loader = torch.utils.data.DataLoader(pickle.loads(pickle.dumps(store)).dataset(2), batch_size=5,
                                         num_workers=2)
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(xs), ref_x) and torch.equal(torch.cat(ys), ref_y)


def test_topk_keeps_topk_exactly(full, top):
    for e in range(E):
        f = full.logits(e, torch.arange(N))  # fp16-rounded full logits
        for fill in ("uniform", "neg_inf"):
            r = top.logits(e, torch.arange(N), fill=fill)
            ind = torch.from_numpy(np.asarray(np.load(top.path / "topk_indices.npy")[e], dtype=np.int64))
            assert torch.equal(r.gather(1, ind), f.gather(1, ind))  # the k stored logits, exactly
            assert torch.equal(ind, f.topk(2, dim=1).indices) or torch.equal(
                f.gather(1, ind).sort(1).values, f.topk(2, dim=1).values.sort(1).values)  # ties aside
            others = torch.ones_like(r, dtype=torch.bool).scatter_(1, ind, False)
            if fill == "neg_inf":
                assert torch.isinf(r[others]).all()
            else:  # top-k probabilities as in the full logits, the rest spread uniformly
                p, pf = r.softmax(1), f.softmax(1)
                torch.testing.assert_close(p.gather(1, ind), pf.gather(1, ind), atol=2e-3, rtol=0)
                torch.testing.assert_close(p.sum(1), torch.ones(N))
                rest = p[others].view(N, K - 2)
                assert torch.allclose(rest, rest[:, :1].expand_as(rest))
                assert (r[others].view(N, K - 2).max(1).values <= r.gather(1, ind).min(1).values).all()


def test_memmap_sizes_match_formula(full, top):
    assert label_store_nbytes(300, 10_000, 1000) == 6_000_000_000  # ImageNet-1K IPC10 × 300 epochs, fp16
    assert label_store_nbytes(300, 10_000, 1000, topk=10) == 132_000_000  # top-10 + int16 + lse
    assert label_store_nbytes(1, 1, 40_000, topk=1) == 1 * (2 + 4) + 4  # int32 indices past 32767 classes
    for store, names in ((full, ["logits"]), (top, ["topk_values", "topk_indices", "lse"])):
        data = 0
        for name in names:
            arr = np.load(store.path / f"{name}.npy", mmap_mode="r")
            size = (store.path / f"{name}.npy").stat().st_size
            assert size - arr.offset == arr.nbytes  # a header, then exactly the array
            data += arr.nbytes
        assert data == store.nbytes() == label_store_nbytes(E, N, K, store.topk)
    assert np.load(full.path / "logits.npy", mmap_mode="r").shape == (E, N, K)
    assert np.load(top.path / "topk_indices.npy", mmap_mode="r").dtype == np.int16


def test_resume_and_refusals(setup, tmp_path, full):
    images, teacher = setup
    path = tmp_path / "s"
    part = build_label_store(images, teacher, aug(), 1, 7, path, device="cpu", progress=False)
    with pytest.raises(DDKitError, match="not in the store"):
        part.logits(1, [0])
    with pytest.raises(FileExistsError):
        build_label_store(images, teacher, aug(), E, 7, path, device="cpu", progress=False)
    with pytest.raises(DDKitError, match="epochs"):  # the store was created for 1 epoch
        build_label_store(images, teacher, aug(), E, 7, path, device="cpu", progress=False, resume=True)
    # an interrupted build (1 of E epochs declared done) continues and matches a store built in one go
    import json
    meta = json.loads((full.path / "meta.json").read_text())
    path2 = tmp_path / "s2"
    path2.mkdir()
    for name in ("logits",):
        arr = np.load(full.path / f"{name}.npy")
        arr[1:] = 0  # epochs 1.. "never written"
        np.save(path2 / f"{name}.npy", arr)
    (path2 / "meta.json").write_text(json.dumps({**meta, "epochs_done": 1}))
    done = build_label_store(images, teacher, aug(), E, 7, path2, batch_size=5, device="cpu", progress=False,
                             resume=True)
    assert torch.equal(done.logits(2, torch.arange(N)), full.logits(2, torch.arange(N)))
    with pytest.raises(DDKitError, match="images"):
        LabelStore.open(full.path, images=images + 0.01)
    with pytest.raises(DDKitError, match="augmentation"):
        LabelStore.open(full.path, aug=Compose([Flip()]))
    with pytest.raises(DDKitError, match="topk"):
        build_label_store(images, teacher, aug(), 1, 0, tmp_path / "t", topk=K + 1, progress=False)
