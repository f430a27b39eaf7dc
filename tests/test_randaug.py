"""timm RandAugment ops against PIL (the library timm calls), the config parser, the draw rule and replay."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from ddkit.augment.randaug import OPS, RandAugment, affine, autocontrast, equalize, parse_config, posterize, \
    sharpness_degenerate, solarize, solarize_add


def _img(seed: int = 0, n: int = 3, size: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(20, 230, (n, 3, size, size), generator=g).float() / 255
    x[0, 1] = (x[0, 1] * 0.5 * 255).round() / 255  # a channel far from the range's ends: autocontrast works
    return x


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _back(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("name,ours,theirs", [
    ("autocontrast", lambda x: autocontrast(x), lambda im: ImageOps.autocontrast(im)),
    ("equalize", lambda x: equalize(x), lambda im: ImageOps.equalize(im)),
    ("posterize2", lambda x: posterize(x, torch.full((len(x),), 2)), lambda im: ImageOps.posterize(im, 2)),
    ("solarize", lambda x: solarize(x, torch.full((len(x),), 100.0)), lambda im: ImageOps.solarize(im, 100)),
    ("color", lambda x: RandAugment()._op("Color", x, torch.full((len(x),), 6.0), torch.zeros(len(x), dtype=torch.bool)),
     lambda im: ImageEnhance.Color(im).enhance(0.1 + 1.8 * 0.6)),
    ("contrast", lambda x: RandAugment()._op("Contrast", x, torch.full((len(x),), 6.0), torch.zeros(len(x), dtype=torch.bool)),
     lambda im: ImageEnhance.Contrast(im).enhance(0.1 + 1.8 * 0.6)),
    ("brightness", lambda x: RandAugment()._op("Brightness", x, torch.full((len(x),), 3.0), torch.zeros(len(x), dtype=torch.bool)),
     lambda im: ImageEnhance.Brightness(im).enhance(0.1 + 1.8 * 0.3)),
    ("sharpness", lambda x: RandAugment()._op("Sharpness", x, torch.full((len(x),), 9.0), torch.zeros(len(x), dtype=torch.bool)),
     lambda im: ImageEnhance.Sharpness(im).enhance(0.1 + 1.8 * 0.9)),
])
def test_photometric_ops_equal_pil(name, ours, theirs):
    x = _img()
    got = ours(x)
    want = torch.stack([_back(theirs(_pil(xi))) for xi in x])
    assert (got - want).abs().max() <= 1.01 / 255, name  # PIL's own rounding, at most one 8-bit step


def test_solarize_add_and_sharpness_border():
    x = torch.tensor([[[[10, 127, 128, 250]]]], dtype=torch.float32).expand(1, 3, 4, 4) / 255
    assert (solarize_add(x, torch.tensor([110.0]))[0, 0, 0] * 255).round().tolist() == [120, 237, 128, 250]
    assert float(posterize(x, torch.tensor([0])).abs().max()) == 0  # 0 bits: black (PIL < 9 allowed it)
    y = _img(1, 1, 6)
    d = sharpness_degenerate(y)
    assert torch.equal(d[..., 0, :], y[..., 0, :]) and torch.equal(d[..., :, -1], y[..., :, -1])


def test_translate_by_whole_pixels_is_a_shift_with_fill():
    x = _img(2, 1, 8)
    coef = torch.tensor([[1.0, 0, 2.0, 0, 1.0, 0]])  # output (x, y) reads input (x + 2, y): a shift left by 2
    out = affine(x, coef, fill=(0.5, 0.25, 0.0))
    assert torch.allclose(out[..., :6], x[..., 2:], atol=1e-6)
    assert torch.allclose(out[0, :, :, 6:], torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1).expand(3, 8, 2), atol=1 / 255)


def test_rotate_matches_pil_in_the_interior():
    x = _img(3, 1, 16)
    ra = RandAugment()
    got = ra._op("Rotate", x, torch.tensor([5.0]), torch.tensor([False]))  # +15 degrees, counter-clockwise
    want = _back(_pil(x[0]).rotate(15.0, resample=Image.BILINEAR, fillcolor=(124, 116, 104)))
    assert (got[0, :, 4:12, 4:12] - want[:, 4:12, 4:12]).abs().mean() < 4 / 255


def test_config_draws_and_replay():
    assert parse_config("rand-m6-n2-mstd1.0") == (6, 2, 1.0)
    with pytest.raises(ValueError):
        parse_config("augmix-m3")
    ra = RandAugment("rand-m6-n2-mstd1.0")
    p = ra.sample(4000, 8, generator=torch.Generator().manual_seed(0))
    assert p["op"].shape == (4000, 2) and int(p["op"].min()) == 0 and int(p["op"].max()) == len(OPS) - 1
    assert abs(float(p["on"].float().mean()) - 0.5) < 0.03  # each op applies with probability 0.5
    assert abs(float(p["mag"].mean()) - 6.0) < 0.1 and float(p["mag"].min()) >= 0 and float(p["mag"].max()) <= 10
    x = _img(4, 6, 8)
    q = ra.sample(6, x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ra.apply(x, q), ra.apply(x, q))  # a draw replays
    off = {**q, "on": torch.zeros_like(q["on"])}
    assert torch.equal(ra.apply(x, off), x)  # nothing on: the image itself (already on the 8-bit grid)


def test_torchvision_randaugment_is_torchvisions_own_ops_under_ddkits_draws():
    from torchvision.transforms import RandAugment as TV
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image

    from ddkit.augment.randaug import TorchvisionRandAugment, make_randaug

    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ra = make_randaug("torchvision")
    assert isinstance(ra, TorchvisionRandAugment) and (ra.num_ops, ra.magnitude) == (2, 9) and len(ra.names) == 14
    p = ra.sample(8, (16, 16), generator=torch.Generator().manual_seed(1))
    before = torch.get_rng_state()
    out = ra.apply(x, p)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is not consumed
    assert torch.equal(out, ra.apply(x, p))  # replay
    assert not torch.equal(out, (x * 255).round() / 255)
    # torchvision's RandAugment() with a global seed equals ddkit's apply given the choices that seed makes
    space = TV()._augmentation_space(31, (16, 16))
    for i, seed in enumerate(range(20, 28)):
        torch.manual_seed(seed)
        ops, negs = [], []
        for _ in range(2):  # torchvision's draw order: an op index, then a sign only for a signed op
            k = int(torch.randint(14, (1,)).item())
            ops.append(k)
            negs.append(bool(torch.randint(2, (1,))) if space[ra.names[k]][1] else False)
        torch.manual_seed(seed)
        img = (x[i] * 255).round().to(torch.uint8)
        want = pil_to_tensor(TV()(to_pil_image(img))).float() / 255
        got = ra.apply(x[i:i + 1], {"op": torch.tensor([ops]), "neg": torch.tensor([negs])})
        assert torch.equal(got[0], want), (seed, [ra.names[k] for k in ops])
    assert (make_randaug("torchvision-n1-m3").num_ops, make_randaug("torchvision-n1-m3").magnitude) == (1, 3)
    with pytest.raises(ValueError, match="0..30"):
        make_randaug("torchvision-m31")
    assert type(make_randaug("rand-m6-n2-mstd1.0")).__name__ == "RandAugment"


def test_edc_recipe_starts_with_torchvision_randaugment_and_bad_configs_refuse():
    from ddkit.evaluate import EvalConfig, get_recipe
    from ddkit.evaluate.recipes import resolve_recipe
    from ddkit.utils import DDKitError

    assert get_recipe("edc").randaug == "torchvision" and get_recipe("edc-in1k").randaug == ""
    with pytest.raises(DDKitError, match="--randaug: unsupported section"):
        resolve_recipe(EvalConfig(recipe="edc", regime="hl", randaug="torchvision-x2"), n_images=10, num_classes=2,
                       ipc=5, image_size=8)
