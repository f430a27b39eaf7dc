"""D4M and Minimax adapters on tiny randomly initialised pipelines built here (no download, no real weights)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddkit.methods import create_method, method_spec
from ddkit.utils import DDKitError
from tests.conftest import make_toy

diffusers = pytest.importorskip("diffusers")

S = 16  # toy images (resized up for the VAE, back down for the set)


def _vae():
    return diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, layers_per_block=1,
                                   down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))


def _toy():
    return make_toy(n_per_class=6, num_classes=2, size=S)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A Stable-Diffusion-layout folder of tiny random parts (CLIP tokenizer over 27 characters)."""
    pytest.importorskip("transformers")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=8).save_pretrained(d / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1)
                  ).save_pretrained(d / "text_encoder")
    diffusers.UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                   attention_head_dim=4).save_pretrained(d / "unet")
    _vae().save_pretrained(d / "vae")
    diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                            steps_offset=1).save_pretrained(d / "scheduler")
    return d


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("dit")
    diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                    num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=3,
                                    norm_num_groups=4).save_pretrained(d / "transformer")
    _vae().save_pretrained(d / "vae")
    return d


def test_d4m_makes_ipc_images_of_the_dataset_shape(sd_dir):
    ds = _toy()
    m = create_method("D4M", ipc=2, weights=str(sd_dir), size=32, steps=4, batch_size=4)
    s = m(ds, None, device="cpu", progress=False)
    assert tuple(s.images.shape) == (4, 3, S, S) and s.labels.tolist() == [0, 0, 1, 1]
    assert torch.isfinite(s.images).all() and 0 <= s.images.min() and s.images.max() <= 1
    assert not torch.equal(s.images[0], s.images[1])  # two prototypes, two images
    again = create_method("d4m", ipc=2, weights=str(sd_dir), size=32, steps=4, batch_size=4)(ds, None, device="cpu",
                                                                                            progress=False)
    assert torch.equal(s.images, again.images)  # seeded


def test_d4m_prototypes_are_the_kmeans_centres_of_the_chunks():
    from sklearn.cluster import MiniBatchKMeans

    from ddkit.methods.d4m import kmeans_prototypes

    lat = torch.randn(7, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    got = kmeans_prototypes(lat, ipc=2, km_expand=2)
    km = MiniBatchKMeans(n_clusters=2, random_state=0, batch_size=4, n_init="auto")
    flat = lat.reshape(7, -1).double().numpy()
    km.partial_fit(flat[:4])
    km.partial_fit(flat[4:])  # the leftover of 3 ≥ ipc is fitted too
    assert got.shape == (2, 4, 2, 2)
    assert np.allclose(got.reshape(2, -1).numpy(), km.cluster_centers_, atol=1e-6)


def test_minimax_makes_ipc_images_and_uses_the_label_map(dit_dir):
    ds = _toy()
    s = create_method("minimax", ipc=3, weights=str(dit_dir), steps=5, batch_size=2, class_ids=(2, 0))(
        ds, None, device="cpu", progress=False)
    assert tuple(s.images.shape) == (6, 3, S, S) and torch.isfinite(s.images).all()
    assert s.meta["dit_label"] == [2, 0]
    with pytest.raises(DDKitError, match="outside the DiT"):
        create_method("minimax", ipc=1, weights=str(dit_dir), steps=2, class_ids=(0, 5))(ds, None, device="cpu",
                                                                                          progress=False)


def test_minimax_respacing_matches_the_adm_rule():
    from ddkit.methods.minimax import respaced_schedule

    s = respaced_schedule(50)
    t = s["timestep_map"]
    assert len(t) == 50 and t[0] == 0 and t[-1] == 999 and (np.diff(t) > 0).all()
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1 - betas)
    # the respaced process keeps ᾱ at the kept timesteps exactly
    assert np.allclose(s["alphas_cumprod"], ac[t], rtol=1e-12)
    full = respaced_schedule(1000)
    assert np.allclose(full["betas"], betas)


def test_minimax_guidance_touches_three_channels_only():
    from ddkit.methods.minimax import guided_output

    cond, unc = torch.randn(2, 8, 2, 2), torch.randn(2, 8, 2, 2)
    eps, var = guided_output(torch.cat([cond, unc]), 2, 4.0, 4)
    assert torch.allclose(eps[:, :3], unc[:, :3] + 4.0 * (cond[:, :3] - unc[:, :3]))
    assert torch.equal(eps[:, 3], cond[:, 3]) and torch.equal(var, cond[:, 4:])


@pytest.mark.parametrize("name,parts", [("d4m", ("unet", "vae", "text_encoder", "tokenizer", "scheduler")),
                                        ("minimax", ("transformer", "vae"))])
def test_missing_weights_are_refused_in_one_line(tmp_path, sd_dir, dit_dir, name, parts):
    ds = _toy()
    with pytest.raises(DDKitError, match="weights"):
        create_method(name, ipc=1)(ds, None, device="cpu", progress=False)
    with pytest.raises(DDKitError, match="not found"):
        create_method(name, ipc=1, weights=str(tmp_path / "nowhere"))(ds, None, device="cpu", progress=False)
    src = sd_dir if name == "d4m" else dit_dir
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    shutil.rmtree(broken / parts[0])
    with pytest.raises(DDKitError, match=f"lacks {parts[0]}/"):
        create_method(name, ipc=1, weights=str(broken))(ds, None, device="cpu", progress=False)
    for f in (broken / "vae").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    shutil.copytree(src / parts[0], broken / parts[0])
    with pytest.raises(DDKitError, match="pickled"):
        create_method(name, ipc=1, weights=str(broken))(ds, None, device="cpu", progress=False)


def test_diffusion_methods_declare_their_weights():
    from ddkit.methods.base import NEEDS

    for name in ("d4m", "minimax"):
        spec = method_spec(name)
        assert spec.needs == ("diffusion-weights",) and not spec.needs_teacher
    assert "diffusion" in NEEDS["diffusion-weights"]
