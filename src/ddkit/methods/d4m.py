"""`d4m`: D4M (Su et al., CVPR 2024) — k-means prototypes in Stable Diffusion's latent space, decoded by img2img.

As suduo94/D4M @da35d10 codes it (largescale-methods.md §9), per class:
1. every real image of the class, Resize(size, size) (`distillation/dataset_utils.py:16-21`, size 512) and mapped
   to [-1, 1], is encoded by the SD-v1.5 VAE — one sample of its latent distribution × the VAE scaling factor
   (`scripts/pipeline_stable_diffusion_gen_latents.py:564-566`; the prompt does not enter these latents);
2. a MiniBatchKMeans(k = ipc, batch = km_expand·ipc, random_state 0, n_init "auto") is `partial_fit` on the
   flattened latents in chunks of km_expand·ipc as a shuffled loader delivers them, and on a last partial chunk
   of ≥ ipc latents (`distillation/gen_prototype.py:51-85`; the official loop fits that leftover only for the
   last class it saw, :83-84 — here every class's, so no class depends on the loader order of others);
   the cluster centres are the class's prototypes (:88-101);
3. each prototype is the starting latent of an img2img pass: noised to the timestep `strength` of the way into
   `steps` scheduler steps, then denoised with classifier-free guidance (prompt = the class name, negative
   prompt "cartoon, anime, painting", guidance 8, strength 0.7; `gen_syn_image.py:56-69`,
   `gen_syn_image_imgnt.sh`; `scripts/pipeline_stable_diffusion_latents2img.py:529-536,728-761`), decoded, and
   saved as a PNG resized to the dataset's resolution (224 px for ImageNet, :69).
The checkpoint's own scheduler runs (SD v1.5: PNDM), fp16 on a GPU as the scripts load it, fp32 on a CPU. The
safety checker is not loaded (the official pipeline blacks out images it flags). Labels: D4M's "training-time
matching" is SRe2L's FKD relabel (`ddkit relabel --recipe sre2l`).

Needs local SD-v1.5 weights (diffusers layout) and `pip install 'ddkit[diffusion]'`; published numbers (ImageNet-1K
R18 IPC 10: 27.9 %) need the real weights and a GPU — on a CPU a 512-px pass takes minutes per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Sequence

import numpy as np
import torch

from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import NEEDS, ClassResult, MethodConfig, check_ipc, register_method
from ddkit.models.diffusion import (NEED, NEED_TEXT, SD_PARTS, check_folder, decode_to_unit, load_stable_diffusion,
                                    require_diffusers, resize_to, to_png_levels)
from ddkit.utils import DDKitError, make_generator

NEEDS.setdefault(NEED, NEED_TEXT)


@dataclass(frozen=True)
class D4MConfig(MethodConfig):
    weights: str = field("", "folder of Stable Diffusion v1.5 in the diffusers layout (unet/ vae/ text_encoder/ "
                             "tokenizer/ scheduler/); published numbers need the real weights and a GPU")
    size: int = field(512, "real images are resized to size×size before VAE encoding (gen_prototype.py --size 512)")
    km_expand: int = field(1, "MiniBatchKMeans batch = km_expand·ipc (gen_prototype_imgnt.sh: 1; argparse: 10)")
    strength: float = field(0.7, "img2img strength: share of the steps the prototype is noised into "
                                 "(gen_syn_image_imgnt.sh -s 0.7)")
    guidance_scale: float = field(8.0, "classifier-free guidance scale (gen_syn_image_imgnt.sh -g 8)")
    steps: int = field(50, "scheduler steps of the img2img pass (the pipeline's num_inference_steps default, 50)")
    negative_prompt: str = field("cartoon, anime, painting", "negative prompt (gen_syn_image.py:64)")
    prompts: str = field("", "text file with one prompt per class in class order (D4M ships label-prompt/*.txt); "
                             "default: the class names with _ as spaces")
    encode_per_class: int = field(0, "encode at most this many real images per class (0: all, as coded)")
    batch_size: int = field(10, "images per VAE encode (gen_prototype.py --batch_size 10)")


def class_prompts(dataset: ImageDataset, path: str) -> List[str]:
    """One prompt per class: the lines of `path`, else the class names."""
    if not path:
        return [c.replace("_", " ") for c in dataset.classes]
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(lines) != dataset.num_classes:
        raise DDKitError(f"{path} has {len(lines)} prompts for {dataset.num_classes} classes: one line per class")
    return lines


def encode_latents(vae: Any, images01: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One sample of each image's VAE latent × scaling factor, at size×size input (gen_latents pipeline:564-566)."""
    x = torch.nn.functional.interpolate(images01, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    x = (x * 2 - 1).to(vae.device, vae.dtype)  # the pipeline's image processor maps [0,1] to [-1,1]
    dist = vae.encode(x).latent_dist
    eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
    return ((dist.mean + dist.std * eps) * vae.config.scaling_factor).float().cpu()


def kmeans_prototypes(latents: torch.Tensor, ipc: int, km_expand: int) -> torch.Tensor:
    """MiniBatchKMeans cluster centres of flattened latents fed in chunks of km_expand·ipc (gen_prototype.py:51-85)."""
    from sklearn.cluster import MiniBatchKMeans

    chunk = km_expand * ipc
    km = MiniBatchKMeans(n_clusters=ipc, random_state=0, batch_size=chunk, n_init="auto")
    flat = latents.reshape(len(latents), -1).numpy().astype(np.float64)
    start = 0
    while start + chunk <= len(flat):
        km.partial_fit(flat[start:start + chunk])
        start += chunk
    if len(flat) - start >= ipc:  # the leftover, when it can seed ipc clusters (:83-84)
        km.partial_fit(flat[start:])
    return torch.from_numpy(km.cluster_centers_).float().reshape(ipc, *latents.shape[1:])


def encode_prompt(sd: dict, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings of `prompts`, padded to the tokenizer's maximum length (the pipeline's encode_prompt)."""
    tok = sd["tokenizer"]
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    enc = sd["text_encoder"]
    return enc(ids.to(enc.device))[0]


def img2img(sd: dict, start: torch.Tensor, prompt: str, cfg: D4MConfig, generator: torch.Generator) -> torch.Tensor:
    """Latents after noising `start` to the strength's timestep and denoising with guidance (latents2img:529-761)."""
    import inspect

    sched, unet = sd["scheduler"], sd["unet"]
    dev, dt = unet.device, unet.dtype
    n = len(start)
    cond = encode_prompt(sd, [prompt] * n)
    uncond = encode_prompt(sd, [cfg.negative_prompt] * n)
    guided = cfg.guidance_scale > 1.0  # the pipeline's do_classifier_free_guidance
    emb = torch.cat([uncond, cond]) if guided else cond
    sched.set_timesteps(cfg.steps, device=dev)
    init = min(int(cfg.steps * cfg.strength), cfg.steps)
    t_start = max(cfg.steps - init, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    noise = torch.randn(start.shape, generator=generator).to(dev, dt)
    lat = start.to(dev, dt)
    if len(timesteps):
        lat = sched.add_noise(lat, noise, timesteps[:1].repeat(n))
    kw = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    if "eta" in inspect.signature(sched.step).parameters:
        kw["eta"] = 0.0
    for t in timesteps:
        inp = sched.scale_model_input(torch.cat([lat, lat]) if guided else lat, t)
        eps = unet(inp, t, encoder_hidden_states=emb).sample
        if guided:
            e_u, e_c = eps.chunk(2)
            eps = e_u + cfg.guidance_scale * (e_c - e_u)
        lat = sched.step(eps, t, lat, **kw).prev_sample
    return lat


@register_method("d4m", config=D4MConfig, aliases=("D4M", "d4m-diffusion"), needs=(NEED,))
def d4m(dataset: ImageDataset, teacher: Any, cfg: D4MConfig, classes: Sequence[int], *,
        device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """D4M: SD-v1.5 latent k-means prototypes per class, decoded by guided img2img (needs local weights)."""
    from tqdm.auto import tqdm

    check_folder(cfg.weights, SD_PARTS, "d4m", "Stable Diffusion v1.5")  # refusals before any work
    require_diffusers("d4m")
    check_ipc(dataset, cfg.ipc)
    if dataset.channels != 3:
        raise DDKitError(f"d4m: Stable Diffusion makes RGB images; {dataset.name or 'this dataset'} has "
                         f"{dataset.channels} channel(s)")
    if cfg.km_expand < 1 or cfg.steps < 1 or not 0.0 <= cfg.strength <= 1.0 or cfg.size % 8:
        raise DDKitError("d4m: km_expand and steps must be ≥ 1, strength in [0, 1], size a multiple of 8")
    prompts = class_prompts(dataset, cfg.prompts)
    sd = load_stable_diffusion(cfg.weights, device)
    vae = sd["vae"]
    for c in classes:
        g = make_generator(cfg.seed, "d4m", c)
        idx = dataset.class_indices(c)
        idx = idx[torch.randperm(len(idx), generator=g)]  # the official loader shuffles
        if cfg.encode_per_class:
            idx = idx[:max(cfg.ipc, cfg.encode_per_class)]
        lat: List[torch.Tensor] = []
        with torch.no_grad():
            for a in tqdm(range(0, len(idx), cfg.batch_size), desc=f"d4m encode class {c}", disable=not progress,
                          leave=False, dynamic_ncols=True):
                lat.append(encode_latents(vae, to_float(dataset.get(idx[a:a + cfg.batch_size])), cfg.size, g))
            protos = kmeans_prototypes(torch.cat(lat), cfg.ipc, cfg.km_expand)
            out = []
            for i in tqdm(range(cfg.ipc), desc=f"d4m img2img class {c}", disable=not progress, leave=False,
                          dynamic_ncols=True):
                z = img2img(sd, protos[i:i + 1], prompts[c], cfg, g)
                out.append(decode_to_unit(vae, z, vae.config.scaling_factor).cpu())
        images = to_png_levels(resize_to(torch.cat(out), dataset.image_size))
        yield ClassResult(c, images, meta={"encoded": len(idx), "prompt": prompts[c]})
