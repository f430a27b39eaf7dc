"""Pretrained diffusion components from a local folder (D4M, Minimax): checked, loaded, never downloaded.

`diffusers` (and `transformers` for Stable Diffusion's CLIP text encoder) are an optional extra:
`pip install 'ddkit[diffusion]'`. Nothing here is imported by `import ddkit.models`'s callers until a
diffusion method runs, and nothing is fetched from the network: every component is read from the folder the
user gives, in the diffusers layout (`save_pretrained`), from `.safetensors` weights only (ddkit never
unpickles a `.bin`). A missing piece is refused with one line naming it.

Layouts read:
* Stable Diffusion (D4M): `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` — e.g. a local copy of
  stable-diffusion-v1-5 (the safety checker is not loaded).
* DiT (Minimax): `transformer/` (a `DiTTransformer2DModel`) and `vae/` (sd-vae-ft-mse), or a separate VAE folder.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from ddkit.utils import DDKitError

#: what the diffusion methods declare in `needs` (methods.base.NEEDS vocabulary)
NEED = "diffusion-weights"
NEED_TEXT = ("local pretrained diffusion weights in the diffusers layout (the `weights` option: Stable Diffusion "
             "v1.5 for d4m, DiT-XL/2 + sd-vae-ft-mse for minimax) and `pip install 'ddkit[diffusion]'`")

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DIT_PARTS = ("transformer", "vae")


def require_diffusers(method: str) -> None:
    """One line when the optional packages are missing."""
    missing = [m for m in ("diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if method == "minimax" and "transformers" in missing:
        missing.remove("transformers")  # DiT has no text encoder
    if missing:
        raise DDKitError(f"{method} needs {' and '.join(missing)}: pip install 'ddkit[diffusion]'")


def _weights_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files[0]
    if any(folder.glob("*.bin")) or any(folder.glob("*.ckpt")):
        raise DDKitError(f"{folder} holds only pickled weights (.bin/.ckpt); ddkit reads .safetensors only — "
                         f"re-save them with diffusers' save_pretrained(safe_serialization=True)")
    raise DDKitError(f"{folder} has no .safetensors weights")


def check_folder(path: str, parts: Sequence[str], method: str, what: str) -> Dict[str, Path]:
    """The subfolders `parts` of `path`, each with its config (and weights); DDKitError naming what is missing."""
    if not path:
        raise DDKitError(f"{method} needs local {what} weights: pass the folder as the `weights` option "
                         f"(--weights DIR; published numbers need the real weights and a GPU)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DDKitError(f"{method}: weights folder {root} not found ({what} in the diffusers layout)")
    missing = []
    found: Dict[str, Path] = {}
    for part in parts:
        d = root / part
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        if part == "tokenizer":
            ok = d.is_dir() and any(d.iterdir())
        else:
            ok = (d / config).is_file()
        if not ok:
            missing.append(f"{part}/" + ("" if part == "tokenizer" else config))
            continue
        if part not in ("tokenizer", "scheduler"):
            _weights_file(d)  # weights present and not a pickle
        found[part] = d
    if missing:
        raise DDKitError(f"{method}: {root} lacks {', '.join(missing)} ({what} in the diffusers layout, "
                         f"e.g. pipeline.save_pretrained(DIR))")
    return found


def _dtype(device: torch.device) -> torch.dtype:
    # the official scripts load fp16 on their GPUs (gen_prototype.py:118, gen_syn_image.py:83); fp32 on a CPU
    return torch.float16 if device.type == "cuda" else torch.float32


def load_stable_diffusion(path: str, device: torch.device) -> Dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, scheduler of a local Stable Diffusion folder, frozen, on `device`."""
    require_diffusers("d4m")
    import diffusers
    from transformers import CLIPTextModel, CLIPTokenizer

    parts = check_folder(path, SD_PARTS, "d4m", "Stable Diffusion v1.5")
    dt = _dtype(device)
    kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dt)
    out: Dict[str, Any] = {
        "unet": diffusers.UNet2DConditionModel.from_pretrained(parts["unet"], **kw),
        "vae": diffusers.AutoencoderKL.from_pretrained(parts["vae"], **kw),
        "text_encoder": CLIPTextModel.from_pretrained(parts["text_encoder"], **kw),
        "tokenizer": CLIPTokenizer.from_pretrained(parts["tokenizer"], local_files_only=True),
        "scheduler": load_scheduler(parts["scheduler"]),
    }
    for k in ("unet", "vae", "text_encoder"):
        out[k] = out[k].to(device).eval().requires_grad_(False)
    return out


def load_scheduler(folder: Path) -> Any:
    """The scheduler class named in the folder's scheduler_config.json (SD v1.5: PNDMScheduler)."""
    import diffusers

    cfg = json.loads((folder / "scheduler_config.json").read_text())
    name = cfg.get("_class_name", "PNDMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise DDKitError(f"{folder}: unknown scheduler {name!r} for this diffusers version")
    return cls.from_pretrained(folder, local_files_only=True)


def load_dit(path: str, vae: str, device: torch.device) -> Dict[str, Any]:
    """transformer (DiT) and vae of local folders, frozen, on `device`; `vae` defaults to `path`/vae."""
    require_diffusers("minimax")
    import diffusers

    parts = check_folder(path, ("transformer",) if vae else DIT_PARTS, "minimax", "DiT-XL/2")
    vae_dir = check_folder(vae, ("vae",), "minimax", "sd-vae-ft-mse")["vae"] if vae else parts["vae"]
    dt = _dtype(device)
    kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dt)
    out = {"transformer": diffusers.DiTTransformer2DModel.from_pretrained(parts["transformer"], **kw),
           "vae": diffusers.AutoencoderKL.from_pretrained(vae_dir, **kw)}
    for k in out:
        out[k] = out[k].to(device).eval().requires_grad_(False)
    return out


def decode_to_unit(vae: Any, latents: torch.Tensor, scale: float) -> torch.Tensor:
    """VAE-decoded images in [0, 1] (float32) from latents scaled by `scale`."""
    x = vae.decode(latents.to(vae.dtype) / scale).sample.float()
    return (x / 2 + 0.5).clamp(0, 1)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic antialiased resize of a float [0,1] batch to size×size (D4M saves PIL-resized PNGs)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(0, 1)


def to_png_levels(x: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels of the PNG files the official scripts save (gen_syn_image.py:69, sample.py:83)."""
    return (x * 255).round() / 255
