"""Image generation from a local diffusers-format model directory, sampled by Pagoda's engine.

    pipe = ImagePipeline.from_pretrained("path/to/stable-diffusion-v1-5")   # no hub access needed
    images = pipe.generate(["a lighthouse at dusk"], sampler="UniPC AYS", steps=10, seeds=[1])

Two layouts are understood: text-to-image (model_index.json naming a UNet2DConditionModel, an
AutoencoderKL, a CLIP text encoder and tokenizer — Stable Diffusion 1.x/2.x shaped) and unconditional
(a UNet2DModel, optionally with a VAE). diffusers and transformers provide the network classes only; the
noise schedule and prediction type are read from the directory's scheduler config, and all sampling is
Pagoda's. The results match diffusers' own pipeline with the matching scheduler (tests/diffusion).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from pagoda.diffusion.engine import DiffusionEngine, ImageRequest
from pagoda.diffusion.engine_driver import EngineDriver
from pagoda.diffusion.model import TextConditioning, UNetModel
from pagoda.diffusion.noise_schedule import NoiseSchedule


@dataclass(frozen=True)
class GenerationOptions:
    sampler: str = "UniPC AYS"
    steps: int = 10
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""


class ImagePipeline:
    def __init__(self, unet, scheduler_config: dict, vae=None, text_encoder=None, tokenizer=None,
                 device: str = "cpu", max_batch_size: int = 16):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.device = torch.device(device)
        noise = NoiseSchedule.from_config(scheduler_config)
        self.model = UNetModel(unet, noise, scheduler_config.get("prediction_type", "epsilon"))
        self.engine = DiffusionEngine(self.model, max_batch_size=max_batch_size, device=device)
        self.driver = EngineDriver(self.engine)  # concurrent callers share the engine's forwards
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.sample_size = unet.config.sample_size
        self.latent_channels = unet.config.in_channels
        self._lock = threading.Lock()
        self._next_id = 0

    @property
    def conditional(self) -> bool:
        return bool(self.model.conditional)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        max_batch_size: int = 16) -> ImagePipeline:
        import diffusers
        import transformers

        with open(os.path.join(path, "model_index.json")) as f:
            index = json.load(f)
        with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
            scheduler_config = json.load(f)

        def load(name: str):
            if name not in index or index[name] is None or index[name][1] is None:
                return None
            library, class_name = index[name]
            module = diffusers if library == "diffusers" else transformers
            cls_ = getattr(module, class_name)
            if name == "tokenizer":
                return cls_.from_pretrained(os.path.join(path, name))
            return cls_.from_pretrained(os.path.join(path, name), torch_dtype=dtype).to(device).eval()

        return cls(load("unet"), scheduler_config, vae=load("vae"), text_encoder=load("text_encoder"),
                   tokenizer=load("tokenizer"), device=device, max_batch_size=max_batch_size)

    # --- conditioning and decoding -----------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(self.device)
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> list:
        """Final samples (latents, or pixels for a pixel-space UNet) -> PIL images."""
        from PIL import Image

        if self.vae is not None:
            samples = self.vae.decode(samples.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        arr = (samples.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        arr = (arr * 255).round().astype(np.uint8)
        return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]

    # --- generation --------------------------------------------------------------------------------
    def requests(self, prompts: list[str | None], seeds: list[int], options: GenerationOptions) -> list[ImageRequest]:
        """One engine request per (prompt, seed), with text conditioning computed here."""
        h = options.height or self.sample_size * self.vae_scale_factor
        w = options.width or self.sample_size * self.vae_scale_factor
        if h % self.vae_scale_factor or w % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}")
        shape = (self.latent_channels, h // self.vae_scale_factor, w // self.vae_scale_factor)
        conds: list = [None] * len(prompts)
        if self.model.num_classes:  # a class-conditional UNet: a prompt that is a class id picks that class
            conds = [int(p) if p and p.strip().isdigit() and int(p) < self.model.num_classes - 1 else None
                     for p in prompts]
        elif self.conditional:
            embeds = self.encode_prompts([p or "" for p in prompts])
            negative = self.encode_prompts([options.negative_prompt] * len(prompts))
            conds = [TextConditioning(e, n, options.guidance_scale) for e, n in zip(embeds, negative)]
        out = []
        with self._lock:
            for cond, seed in zip(conds, seeds):
                out.append(ImageRequest(f"img-{self._next_id}", shape, options.sampler, options.steps, seed, cond))
                self._next_id += 1
        return out

    def generate_samples(self, prompts: list[str | None], seeds: list[int],
                         options: GenerationOptions = GenerationOptions()) -> torch.Tensor:
        reqs = self.requests(prompts, seeds, options)
        results = self.driver.run(reqs)
        return torch.stack([results[r.request_id] for r in reqs])

    def generate(self, prompts: list[str | None], seeds: list[int] | None = None,
                 options: GenerationOptions = GenerationOptions(), **kwargs) -> list:
        """PIL images, one per prompt (`kwargs` override fields of `options`)."""
        if kwargs:
            options = GenerationOptions(**{**options.__dict__, **kwargs})
        seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError("need one seed per prompt")
        return self.decode(self.generate_samples(prompts, seeds, options))
