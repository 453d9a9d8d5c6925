"""Train the digits diffusion model: `python -m pagoda.diffusion.digits.train [--minutes 7] [--out DIR]`.

A small diffusers UNet2DModel on scikit-learn's 1797 8x8 digits, trained with Stable Diffusion's noise schedule
(scaled-linear betas 0.00085..0.012, 1000 steps, epsilon prediction) so that the SD1.5 Align-Your-Steps table
applies to it. Labels are dropped to the "any digit" class 20% of the time, so one network samples both
unconditionally and per digit. The EMA of the weights is saved as a diffusers pipeline directory (DDPMPipeline
layout), which `ImagePipeline.from_pretrained` loads. CPU-sized: it stops at --steps or after --minutes.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from pagoda.diffusion.digits import NULL_CLASS, WEIGHTS_DIR, load_digit_images
from pagoda.diffusion.noise_schedule import make_betas
from pagoda.diffusion.tiny import SD_SCHEDULER


def build_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16, num_class_embeds=NULL_CLASS + 1,
    )


def train(steps: int, minutes: float, batch_size: int, lr: float, seed: int, label_dropout: float = 0.2,
          ema_decay: float = 0.995, log_every: int = 50):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = load_digit_images()
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    alphas_cumprod = torch.cumprod(1 - make_betas("scaled_linear", 0.00085, 0.012, 1000), 0)

    unet = build_unet().train()
    ema = build_unet().eval()
    ema.load_state_dict(unet.state_dict())
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    start, budget = time.perf_counter(), minutes * 60
    step, avg = 0, None
    while step < steps:
        progress = max(step / steps, (time.perf_counter() - start) / budget)
        if progress >= 1:
            break
        # short warm-up, then cosine decay over whichever runs out first: steps or time
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * progress))
        idx = torch.from_numpy(rng.integers(0, len(images), batch_size))
        x0, y = images_t[idx], labels_t[idx].clone()
        y[torch.rand(batch_size) < label_dropout] = NULL_CLASS
        t = torch.randint(0, 1000, (batch_size,))
        eps = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=y).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # the EMA warms up (decay grows with the step) so a short run is not dominated by the initial weights
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % log_every == 0:
            print(f"step {step}: loss {avg:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    print(f"trained {step} steps in {time.perf_counter() - start:.0f}s, final loss {avg:.4f}")
    return ema


def save(unet, out_dir: str) -> None:
    from diffusers import DDIMScheduler, DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(SD_SCHEDULER)).save_pretrained(out_dir)  # type: ignore[attr-defined]  # diffusers' lazy module hides it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=WEIGHTS_DIR)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    save(train(args.steps, args.minutes, args.batch_size, args.lr, args.seed), args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
