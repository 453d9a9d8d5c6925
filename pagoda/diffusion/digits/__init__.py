"""A small diffusion model of our own: scikit-learn's 8x8 handwritten digits under Stable Diffusion's noise.

The weights in `weights/` (a diffusers-format pipeline directory, ~3 MB) are trained by
`python -m pagoda.diffusion.digits.train` in a few minutes on CPU. The UNet is class-conditional with an extra
"any digit" class (10) learnt by label dropout, so it samples unconditionally by default; a prompt that is a
single digit ("7") asks for that digit. It is `pagoda image`'s default model.
"""

from __future__ import annotations

import os

import numpy as np

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
NUM_CLASSES = 10
NULL_CLASS = 10  # "any digit": the label-dropout class


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 images in [-1, 1], shape (N, 1, 8, 8), and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # pixel values are 0..16
    return images, data.target.astype(np.int64)

