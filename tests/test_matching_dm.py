"""DM: the loss decreases, an IPC-1 set beats a random one under hard labels, presets, NaN guard."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddkit.augment import dsa
from ddkit.augment.zca import Space
from ddkit.data.base import ImageDataset
from ddkit.methods.dm import DMConfig, distribution_matching, dm_loss, settings
from ddkit.methods.matching_ops import LossLog, RealPool, fresh_net, init_images
from ddkit.models import create_model
from ddkit.utils import DDKitError, make_generator


def separable(n: int, seed: int, k: int = 4, size: int = 8, sigma: float = 120.0) -> ImageDataset:
    """k fixed random templates + heavy pixel noise: one real image is a poor prototype of its class."""
    tmpl = torch.rand(k, 3, size, size, generator=torch.Generator().manual_seed(1234)) * 160 + 48
    labels = torch.arange(k).repeat_interleave(n)
    noise = torch.randn(len(labels), 3, size, size, generator=torch.Generator().manual_seed(seed)) * sigma
    x = (tmpl[labels] + noise).clamp(0, 255).to(torch.uint8)
    return ImageDataset(x, labels, [f"c{i}" for i in range(k)], [0.5] * 3, [0.25] * 3, name="separable")


def hl_accuracy(x01: torch.Tensor, y: torch.Tensor, test: ImageDataset, seed: int) -> float:
    """Hard-label student: an MLP trained with CE on the set (Adam, 100 full-batch steps)."""
    torch.manual_seed(seed)
    m = create_model("mlp", num_classes=test.num_classes, image_size=test.image_size, channels=3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    space = Space(test.mean, test.std)
    xs = space.encode(x01)
    for _ in range(100):
        loss = F.cross_entropy(m(xs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (m(space.encode(test.images)).argmax(1) == test.labels).float().mean().item()


def _dm_class(pool, c, cfg, iterations):
    s = {**settings(cfg), "iterations": iterations}
    g = make_generator(cfg.seed, "dm", c)
    syn, _ = init_images(pool, c, cfg.ipc, cfg.init, g)
    log = LossLog(iterations + 1, "t", False, "dm")
    return syn, distribution_matching(pool, c, syn, cfg, s, g, log), log


def test_dm_loss_decreases_and_ipc1_beats_random_under_hl():
    train, test = separable(50, 1), separable(100, 2)
    pool = RealPool(train, Space(train.mean, train.std), torch.device("cpu"))
    acc_dm, acc_rand = [], []
    for seed in range(3):
        cfg = DMConfig(ipc=1, seed=seed, model="mlp", batch_real=50, dsa_strategy="none")
        rand_imgs, dm_imgs = [], []
        for c in range(train.num_classes):
            init, out, log = _dm_class(pool, c, cfg, 30)
            assert sum(log.values[-5:]) < 0.7 * sum(log.values[:5])  # the matching loss goes down
            rand_imgs.append(pool.space.decode(init))  # the random baseline: the same real images, unoptimised
            dm_imgs.append(pool.space.decode(out))
        y = torch.arange(train.num_classes)
        acc_rand.append(hl_accuracy(torch.cat(rand_imgs), y, test, seed))
        acc_dm.append(hl_accuracy(torch.cat(dm_imgs), y, test, seed))
    assert sum(acc_dm) / 3 > sum(acc_rand) / 3 + 0.1, (acc_dm, acc_rand)


def test_dm_loss_is_squared_distance_of_mean_embeddings_under_a_shared_draw():
    train = separable(8, 0)
    net = fresh_net("mlp", train, 0, torch.device("cpu"))
    pool = RealPool(train, Space(train.mean, train.std), torch.device("cpu"))
    real, _ = pool.batch(0, 8, make_generator(0, "r"))
    aug = dsa("color_crop_flip_scale_rotate", mode="single")
    got = dm_loss(net, real, real[:1], aug, make_generator(0, "a"))
    p = aug.sample(1, real.shape, generator=make_generator(0, "a"))
    want = ((net.embed(aug.apply(real, p)).mean(0) - net.embed(aug.apply(real[:1], p))[0]) ** 2).sum()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert float(dm_loss(net, real, real, aug, make_generator(1, "a")).detach()) == pytest.approx(0.0, abs=1e-9)


def test_dm_presets_and_nan_guard():
    assert settings(DMConfig(ipc=10)) == {"iterations": 20000, "batch_real": 256, "lr_img": 1.0}
    assert settings(DMConfig(ipc=100))["lr_img"] == 10.0
    cpu = settings(DMConfig(ipc=10, preset="cpu"))
    assert cpu["iterations"] < 20000 and cpu["batch_real"] < 256 and cpu["lr_img"] == 1.0
    train = separable(8, 0)
    pool = RealPool(train, Space(train.mean, train.std), torch.device("cpu"))
    cfg = DMConfig(ipc=1, model="mlp", batch_real=8, lr_img=float("nan"))
    with pytest.raises(DDKitError, match=r"iteration 1 \(lr_img=nan\)"):
        _dm_class(pool, 0, cfg, 5)


def test_dm_embeds_through_a_resnet_and_a_mobilenet_without_running_the_classifier():
    """DM's fresh net may be a torchvision ResNet (the official networks.py gives ResNets an embed) or another
    net: the embedding is the pooled classifier input, so its width is the classifier's in_features and the
    classifier's weights do not change it."""
    from ddkit.methods.dm import embed
    from ddkit.models import create_model

    x = torch.randn(3, 3, 32, 32)
    for name, width in (("resnet18_modified", 512), ("mobilenet_v2_cifar", 1280)):
        net = create_model(name, num_classes=10, image_size=32, channels=3).eval()
        with torch.no_grad():
            f = embed(net, x)
            assert f.shape == (3, width), name
            head = net.fc if hasattr(net, "fc") else net.classifier[-1]
            head.weight.add_(1.0)  # the classifier is not part of the embedding
            assert torch.equal(embed(net, x), f), name
            assert torch.allclose(head(f), net(x), atol=1e-5), name  # and it is the classifier's input
