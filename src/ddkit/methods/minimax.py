"""`minimax`: Minimax Diffusion (Gu et al., CVPR 2024) — class-conditional DiT samples decoded by SD-VAE.

What ddkit runs is Minimax's sampler (`sample.py` @969fc6f, largescale-methods.md §10) on a DiT the user gives:
* the DiT's own diffusion, respaced: the linear β schedule of 1000 steps (β 1e-4 → 0.02,
  `diffusion/gaussian_diffusion.py:98-115`) thinned to `steps` = 50 evenly spaced timesteps
  (`diffusion/respace.py:12-60`, β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i-1}}, :79-86), ancestral sampling with the learned
  variance interpolated between the clipped posterior variance and β' (LEARNED_RANGE, gaussian_diffusion.py:285-292,
  `learn_sigma=True` in `diffusion/__init__.py`), x₀ from ε not clipped (`clip_denoised=False`, sample.py:75-77);
* classifier-free guidance 4.0 against the null class (= the DiT's class count), applied — as DiT and Minimax
  code it "for exact reproducibility" — to the first three latent channels of ε only (`models.py:318-334`);
* latents / 0.18215 decoded by sd-vae-ft-mse (`--vae mse`, sample.py:79,96), mapped from [-1, 1] and saved as PNG
  (sample.py:82-84), here resized to the dataset's resolution.
Minimax draws 100 images per class and takes random IPC subsets (sample.py `--num-samples 100`, its issue #16);
ipc i.i.d. draws per class are the same distribution. The Minimax objective itself — fine-tuning DiT-XL/2
(DiffFit: biases, norms and the class embedding only, `train_dit.py:116-127`) with the representativeness and
diversity terms against per-class memories (:248-280) — is NOT in ddkit: give the fine-tuned DiT (converted to
the diffusers layout) as `weights`; with the public ImageNet DiT-XL/2 this runs the paper's "DiT" baseline.

`class_ids` maps the dataset's classes to the DiT's label ids (ImageNet indices for ImageNette/ImageWoof with the
1000-class DiT); default: the class index in the dataset. Needs local weights and `pip install 'ddkit[diffusion]'`;
published numbers (ImageNet-1K R18 IPC 10: 44.3 %, ImageWoof ResNetAP-10 39.2 %) need the fine-tuned weights and a
GPU. Labels: the RDED/IDC protocols relabel or train on these images as for any set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.methods.base import NEEDS, ClassResult, MethodConfig, register_method
from ddkit.models.diffusion import (DIT_PARTS, NEED, NEED_TEXT, check_folder, decode_to_unit, load_dit,
                                    require_diffusers, resize_to, to_png_levels)
from ddkit.utils import DDKitError, make_generator

NEEDS.setdefault(NEED, NEED_TEXT)

VAE_SCALE = 0.18215  # sample.py:79
GUIDED_CHANNELS = 3  # models.py:330: guidance on ε's first three channels, as DiT's code does


@dataclass(frozen=True)
class MinimaxConfig(MethodConfig):
    weights: str = field("", "folder with the (Minimax-fine-tuned) DiT-XL/2 in the diffusers layout: transformer/ "
                             "[+ vae/]; published numbers need the fine-tuned weights and a GPU")
    vae: str = field("", "folder holding vae/ (sd-vae-ft-mse, sample.py --vae mse); default: WEIGHTS/vae")
    steps: int = field(50, "respaced sampling steps (sample.py --num-sampling-steps 50)")
    cfg_scale: float = field(4.0, "classifier-free guidance scale (sample.py --cfg-scale 4.0)")
    class_ids: Optional[Tuple[int, ...]] = field(None, "the DiT label id of each dataset class, in class order "
                                                       "(default: the class index)")
    batch_size: int = field(1, "images sampled together (sample.py: 1)")


def respaced_schedule(steps: int, train_steps: int = 1000) -> Dict[str, np.ndarray]:
    """The float64 tables of the respaced linear-β diffusion (respace.py:12-86, gaussian_diffusion.py:170-203)."""
    if not 1 <= steps <= train_steps:
        raise DDKitError(f"minimax: steps must be in 1..{train_steps}, got {steps}")
    scale = 1000 / train_steps
    betas = np.linspace(scale * 0.0001, scale * 0.02, train_steps, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    stride = (train_steps - 1) / (steps - 1) if steps > 1 else 1
    taken, cur = set(), 0.0
    for _ in range(steps):  # space_timesteps(T, "steps"): one section, the stride accumulated as coded
        taken.add(int(round(cur)))
        cur += stride
    use = sorted(taken)
    new_betas, last = [], 1.0
    for t in use:
        new_betas.append(1 - ac[t] / last)
        last = ac[t]
    b = np.array(new_betas)
    a = np.cumprod(1.0 - b)
    a_prev = np.append(1.0, a[:-1])
    post_var = b * (1.0 - a_prev) / (1.0 - a)
    post_logvar = np.log(np.append(post_var[1], post_var[1:])) if len(b) > 1 else np.log(b)
    return {"timestep_map": np.array(use), "betas": b, "alphas_cumprod": a,
            "coef1": b * np.sqrt(a_prev) / (1.0 - a), "coef2": (1.0 - a_prev) * np.sqrt(1.0 - b) / (1.0 - a),
            "post_logvar": post_logvar}


def guided_output(out: torch.Tensor, n: int, cfg_scale: float, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ε, variance values) of the conditional half of a [cond; uncond] DiT output, ε guided on GUIDED_CHANNELS."""
    cond, uncond = out[:n], out[n:]
    eps, var = cond[:, :channels].clone(), cond[:, channels:]
    k = GUIDED_CHANNELS
    eps[:, :k] = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    return eps, var


def sample_latents(dit: Any, labels: torch.Tensor, cfg: MinimaxConfig, generator: torch.Generator) -> torch.Tensor:
    """Ancestral sampling of the respaced learned-variance diffusion with guidance (sample.py:67-77)."""
    s = respaced_schedule(cfg.steps)
    dev, dt = dit.device, dit.dtype
    c, size = dit.config.in_channels, dit.config.sample_size
    n = len(labels)
    null = torch.full((n,), int(dit.config.num_embeds_ada_norm), dtype=torch.long)
    y = torch.cat([labels, null]).to(dev)
    x = torch.randn(n, c, size, size, generator=generator, dtype=torch.float64)

    def tab(name: str, i: int) -> torch.Tensor:
        return torch.tensor(float(s[name][i]), dtype=torch.float64)

    for i in reversed(range(len(s["betas"]))):
        t = torch.full((2 * n,), int(s["timestep_map"][i]), dtype=torch.long, device=dev)
        out = dit(torch.cat([x, x]).to(dev, dt), timestep=t, class_labels=y).sample.double().cpu()
        eps, var = guided_output(out, n, cfg.cfg_scale, c)
        frac = (var + 1) / 2
        logvar = frac * np.log(s["betas"][i]) + (1 - frac) * tab("post_logvar", i)
        a = tab("alphas_cumprod", i)
        x0 = torch.sqrt(1.0 / a) * x - torch.sqrt(1.0 / a - 1) * eps
        mean = tab("coef1", i) * x0 + tab("coef2", i) * x
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        x = mean + (torch.exp(0.5 * logvar) * noise if i > 0 else 0)
    return x.float()


@register_method("minimax", config=MinimaxConfig, aliases=("Minimax", "minimax-diffusion", "MinimaxDiffusion"),
                 needs=(NEED,))
def minimax(dataset: ImageDataset, teacher: Any, cfg: MinimaxConfig, classes: Sequence[int], *,
            device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """Minimax Diffusion's sampler: guided DiT samples per class, decoded by SD-VAE (needs local weights)."""
    from tqdm.auto import tqdm

    check_folder(cfg.weights, ("transformer",) if cfg.vae else DIT_PARTS, "minimax", "DiT-XL/2")
    require_diffusers("minimax")
    if dataset.channels != 3:
        raise DDKitError(f"minimax: the SD-VAE makes RGB images; {dataset.name or 'this dataset'} has "
                         f"{dataset.channels} channel(s)")
    if cfg.class_ids is not None and len(cfg.class_ids) != dataset.num_classes:
        raise DDKitError(f"minimax: {len(cfg.class_ids)} class_ids for {dataset.num_classes} classes: one per class")
    if cfg.batch_size < 1:
        raise DDKitError("minimax: batch_size must be ≥ 1")
    nets = load_dit(cfg.weights, cfg.vae, device)
    dit, vae = nets["transformer"], nets["vae"]
    if dit.config.out_channels != 2 * dit.config.in_channels or not dit.config.num_embeds_ada_norm:
        raise DDKitError("minimax: the DiT must be class-conditional and predict ε and its variance "
                         f"(out_channels {dit.config.out_channels} ≠ 2 × in_channels {dit.config.in_channels})")
    n_labels = int(dit.config.num_embeds_ada_norm)
    for c in classes:
        label = int(cfg.class_ids[c]) if cfg.class_ids is not None else c
        if not 0 <= label < n_labels:
            raise DDKitError(f"minimax: class {c} maps to label {label}, outside the DiT's 0..{n_labels - 1}")
        g = make_generator(cfg.seed, "minimax", c)
        out = []
        with torch.no_grad():
            for a in tqdm(range(0, cfg.ipc, cfg.batch_size), desc=f"minimax class {c}", disable=not progress,
                          leave=False, dynamic_ncols=True):
                k = min(cfg.batch_size, cfg.ipc - a)
                z = sample_latents(dit, torch.full((k,), label, dtype=torch.long), cfg, g)
                out.append(decode_to_unit(vae, z.to(vae.device), VAE_SCALE).cpu())
        images = to_png_levels(resize_to(torch.cat(out), dataset.image_size))
        yield ClassResult(c, images, meta={"dit_label": label})
