"""Out-of-distribution image sets that can be built offline, as uint8 (N, 32, 32, 3).

The benchmarks of the field (SVHN, LSUN, Textures, Places) cannot be downloaded here; each set
below stands in for one, and the docstring says how it differs:

  digits          scikit-learn's bundled handwritten digits (UCI optdigits: 1,797 images, 8×8,
                  17 grey levels), upscaled bilinearly to 32×32 and copied to three channels.
                  Stands in for **SVHN** (digits as CIFAR's near-OOD natural-image set), but is
                  handwritten, grey, low-resolution and centred rather than photographed house
                  numbers in colour with distracting neighbours, so it is *farther* from CIFAR.
  gaussian-noise  i.i.d. N(0.5, 0.25²) pixels, clipped to [0, 1].  The "Gaussian" anomaly set of
                  Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure"
                  (ICLR 2019).
  uniform-noise   i.i.d. U(0, 1) pixels: the "Uniform" synthetic set of the same paper.
  blobs           Bernoulli(0.7) pixels blurred by a Gaussian (σ = 1) and thresholded at 0.75:
                  amorphous shapes with sharp edges, the "Blobs" set of the same paper.

Every set is seeded, so it is the same on every machine.
"""

from __future__ import annotations

import numpy as np

OOD_SETS = ("digits", "gaussian-noise", "uniform-noise", "blobs")
STANDS_IN_FOR = {"digits": "SVHN (near OOD: digits)", "gaussian-noise": "Gaussian noise (Outlier Exposure)",
                 "uniform-noise": "Uniform noise (Outlier Exposure)", "blobs": "Blobs (Outlier Exposure)"}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def digits(n: int, seed: int = 0) -> np.ndarray:
    """``n`` digits (drawn without replacement while they last, then with), 32×32 RGB."""
    import torch
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(images))[:n] if n <= len(images) else rng.integers(0, len(images), n)
    small = torch.from_numpy(images[idx]).unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    return _to_uint8(big.squeeze(1).numpy())[..., None].repeat(3, axis=-1)


def gaussian_noise(n: int, seed: int = 0) -> np.ndarray:
    return _to_uint8(np.random.default_rng(seed).normal(0.5, 0.25, (n, 32, 32, 3)))


def uniform_noise(n: int, seed: int = 0) -> np.ndarray:
    return _to_uint8(np.random.default_rng(seed).uniform(0.0, 1.0, (n, 32, 32, 3)))


def blobs(n: int, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    coins = np.random.default_rng(seed).binomial(1, 0.7, (n, 32, 32, 3)).astype(np.float32)
    smooth = gaussian_filter(coins, sigma=(0, 1.0, 1.0, 0))  # blur within each image and channel
    smooth[smooth < 0.75] = 0.0
    return _to_uint8(smooth)


BUILDERS = {"digits": digits, "gaussian-noise": gaussian_noise, "uniform-noise": uniform_noise, "blobs": blobs}


def ood_set(name: str, n: int, seed: int = 0) -> np.ndarray:
    """The OOD set ``name`` with ``n`` images."""
    if name not in BUILDERS:
        raise ValueError(f"unknown OOD set {name!r}; known: {', '.join(OOD_SETS)}")
    if n < 1:
        raise ValueError(f"an OOD set needs at least one image, got {n}")
    return BUILDERS[name](n, seed)
