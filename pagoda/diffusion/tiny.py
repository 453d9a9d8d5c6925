"""Tiny random-weight diffusers pipelines, saved to a local directory in diffusers' own format.

They exist for tests and for `pagoda image`'s default demo when no model directory is given: the weights
are random, so the images are noise-like patterns, not pictures. Real models load the same way from a
local diffusers directory (see pipeline.py).
"""

from __future__ import annotations

import json
import os

import torch

SD_SCHEDULER = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
}


def _byte_level_alphabet() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(len(extra))]


def _write_clip_tokenizer(out_dir: str) -> None:
    """A byte-level CLIP BPE vocabulary with no merges: one token per character."""
    chars = _byte_level_alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")


def build_tiny_text_to_image(out_dir: str, seed: int = 0, latent_size: int = 8) -> str:
    """A Stable-Diffusion-shaped pipeline (CLIP text encoder, conditional UNet, KL VAE), a few MB."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=latent_size * 2,
    )
    _write_clip_tokenizer(os.path.join(out_dir, "tokenizer"))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(out_dir, "tokenizer"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)  # type: ignore[attr-defined]  # diffusers' lazy module hides it
    return out_dir


def build_tiny_unconditional(out_dir: str, seed: int = 0, size: int = 16, channels: int = 3) -> str:
    """An unconditional pixel-space UNet2DModel with a DDPM-style scheduler config."""
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
    )
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(SD_SCHEDULER)).save_pretrained(out_dir)  # type: ignore[attr-defined]  # diffusers' lazy module hides it
    return out_dir
