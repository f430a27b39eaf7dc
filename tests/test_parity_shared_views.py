"""bench/parity/recover_loop.py's shared views (issue #27, the CDA and DWA recover loops): a side asking with the
same crop bound gets the same view whichever side it is, a side asking with another bound gets another box, and
ddkit's recover engine under `ddkit_views` crops, flips and rolls exactly as torchvision does under
`official_views`."""
from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from tests.conftest import load_bench_script

L = load_bench_script("parity/recover_loop.py")


def _spec(milestone: float = 1.0):
    from ddkit.methods.recover import RecoverSpec

    return RecoverSpec(iterations=8, lr=0.1, r_bn=0.0, jitter=3, rrc=True, flip=True,
                       curriculum=(milestone, "cosine"))


def test_ddkit_views_follow_ddkit_schedule_and_the_shared_draw():
    import ddkit.methods.recover as R

    views = L.SharedViews(16, 3)
    spec = _spec()
    with L.ddkit_views(views):
        drawn = [R._draw_views([torch.Generator().manual_seed(0)], spec, it, (16, 16)) for it in range(8)]
    assert R._draw_views.__name__ == "_draw_views"  # restored
    other = L.SharedViews(16, 3)
    for it, d in enumerate(drawn):
        lo = R.cda_min_scale(it, 8, 1.0, "cosine")
        assert views.scales["ddkit"][it] == lo
        assert d["box"][0].tolist() == other.box(it, lo, "official")
        assert d["roll"][0].tolist() == other.roll(it) and bool(d["flip"][0]) == other.flip(it)


def test_another_bound_gives_another_box():
    views = L.SharedViews(32, 4)
    boxes_a = [views.box(n, 1.0, "ddkit") for n in range(20)]
    boxes_b = [views.box(n, 0.08, "official") for n in range(20)]
    assert boxes_a != boxes_b
    assert all(b == [0, 0, 32, 32] or b[2] * b[3] >= 0.99 * 32 * 32 * 0.75 for b in boxes_a)  # whole-ish images
    check = L.schedule_check(views)
    assert check["max_abs_difference"] > 0.9


def test_official_views_crop_flip_roll_as_ddkit_does():
    """torchvision's RandomResizedCrop + flip + torch.roll under official_views == ddkit's apply_views under
    ddkit_views, step by step along the same cosine schedule (to the two resamplers' float rounding)."""
    import ddkit.methods.recover as R

    x = torch.randn(2, 3, 16, 16)
    spec = _spec()
    theirs_views, ours_views = L.SharedViews(16, 3), L.SharedViews(16, 3)
    transforms, rand = L.official_views(theirs_views)
    flips = set()
    with L.ddkit_views(ours_views):
        for it in range(8):
            lo = R.cda_min_scale(it, 8, 1.0, "cosine")
            aug = transforms.Compose([transforms.RandomResizedCrop(16, scale=(lo, 1.0)),
                                      transforms.RandomHorizontalFlip()])
            theirs = torch.roll(aug(x), shifts=(rand.randint(0, 3), rand.randint(0, 3)), dims=(2, 3))
            d = R._draw_views([torch.Generator()], spec, it, (16, 16))
            ours = R.apply_views(x, d, 1)
            flips.add(bool(d["flip"][0]))
            assert torch.allclose(ours, theirs, atol=1e-4), it
    assert theirs_views.scales["official"] == ours_views.scales["ddkit"]
    assert flips == {True, False}  # both branches of the flip were compared
