"""A digits classifier to judge generated digits: confident-label share and Fréchet distance in its features.

A one-hidden-layer MLP (scikit-learn) trained on all 1797 real digits in a second or two. Its hidden ReLU
activations are the feature space for a Fréchet distance (FID's formula, with this small network in place of
Inception): 64 features, so a few hundred samples give a usable estimate.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.diffusion.digits import load_digit_images


def _flat(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images in [-1, 1], any shape (N, ...) with 64 values each -> (N, 64) float64, clamped as decoding does."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.clip(arr.reshape(len(arr), -1).astype(np.float64), -1.0, 1.0)


class DigitsClassifier:
    def __init__(self, hidden: int = 64, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        images, labels = load_digit_images()
        self.mlp = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=600, random_state=seed)
        self.mlp.fit(_flat(images), labels)
        self.real_images = images

    def probabilities(self, images) -> np.ndarray:
        return self.mlp.predict_proba(_flat(images))

    def features(self, images) -> np.ndarray:
        """The hidden layer's ReLU activations (N, hidden)."""
        return np.maximum(_flat(images) @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0.0)

    def confident_share(self, images, threshold: float = 0.9) -> float:
        """Share of images whose top class has probability ≥ threshold."""
        return float((self.probabilities(images).max(1) >= threshold).mean())

    def frechet_distance(self, images, reference=None) -> float:
        """Fréchet distance between Gaussians fitted to the features of `images` and of `reference` (all real
        digits by default)."""
        ref = self.real_images if reference is None else reference
        return frechet_distance(self.features(images), self.features(ref))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2(ΣaΣb)^½), with the square root's tiny imaginary part dropped."""
    from scipy.linalg import sqrtm

    mu_a, mu_b = a.mean(0), b.mean(0)
    # a small ridge keeps the product's square root defined when a ReLU unit never fires
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
