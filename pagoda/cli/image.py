"""`pagoda image "prompt" --sampler "UniPC AYS" --steps 10 -o out.png`: generate images to a PNG (a grid if n > 1).

With `--model DIR` it loads a local diffusers-format pipeline (Stable Diffusion 1.x/2.x shaped, or an
unconditional UNet2DModel). Without one it uses Pagoda's own digits model (pagoda/diffusion/digits: 8x8
handwritten digits, weights in the repo): the prompt is ignored unless it is a single digit "0".."9", which
asks for that digit. Images under 16 pixels are enlarged (nearest neighbour) so a grid is viewable.
"""

from __future__ import annotations

import argparse
import math
import sys

HELP = "generate images with a diffusion model (samplers: UniPC AYS, UniPC Trailing, DDIM Trailing, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default="", help="text prompt (ignored by unconditional models)")
    parser.add_argument("--model", default=None, help="local diffusers pipeline directory (default: the bundled digits model)")
    parser.add_argument("--sampler", default="UniPC AYS",
                        help='"UniPC AYS", "UniPC Trailing", "DDIM Trailing", "DPM++ 2M Karras" or "Euler A"')
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n", type=int, default=1, help="number of images (written as one grid)")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="most images in one model forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", type=int, default=None,
                        help="enlarge each image this many times (default: 4 for images under 16 px, else 1)")
    parser.add_argument("-o", "--output", default="image.png")


def grid(images: list):
    """Tile equally sized PIL images into a near-square grid."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new(images[0].mode, (cols * w, rows * h))
    for k, im in enumerate(images):
        sheet.paste(im, ((k % cols) * w, (k // cols) * h))
    return sheet


def enlarge(images: list, scale: int | None) -> list:
    """Nearest-neighbour enlargement; by default only tiny images (the 8x8 digits) are enlarged, x4."""
    from PIL import Image

    if scale is None:
        scale = 4 if min(images[0].size) < 16 else 1
    if scale == 1:
        return images
    return [im.resize((im.size[0] * scale, im.size[1] * scale), Image.Resampling.NEAREST) for im in images]


def run(args: argparse.Namespace) -> int:
    import time

    from pagoda.diffusion.pipeline import GenerationOptions, ImagePipeline
    from pagoda.diffusion.presets import get_preset

    try:
        get_preset(args.sampler)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.n < 1 or args.steps < 1:
        print("error: --n and --steps must be at least 1", file=sys.stderr)
        return 2
    if args.scale is not None and args.scale < 1:
        print("error: --scale must be at least 1", file=sys.stderr)
        return 2
    model_dir = args.model
    if model_dir is None:
        from pagoda.diffusion.digits import WEIGHTS_DIR

        print("note: no --model given; using the bundled 8x8 digits model", file=sys.stderr)
        model_dir = WEIGHTS_DIR
    pipe = ImagePipeline.from_pretrained(model_dir, device=args.device, max_batch_size=args.batch_size)
    options = GenerationOptions(args.sampler, args.steps, args.guidance_scale, args.height, args.width,
                                args.negative_prompt)
    start = time.perf_counter()
    try:
        images = pipe.generate([args.prompt] * args.n, [args.seed + k for k in range(args.n)], options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    images = enlarge(images, args.scale)
    (images[0] if len(images) == 1 else grid(images)).save(args.output)
    stats = pipe.engine.stats
    print(f"wrote {args.output}: {args.n} image(s) {images[0].size[0]}x{images[0].size[1]}, {args.sampler}, "
          f"{args.steps} steps, {stats.forwards} model forwards, {elapsed:.2f}s")
    return 0
