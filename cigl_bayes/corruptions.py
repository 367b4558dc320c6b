"""CIFAR-10-C-style shifted test sets, built offline from the CIFAR-10 test set.

CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019) applies 15 corruptions at 5 severities to the test
set.  It cannot be downloaded here, so this module rebuilds it: each family below uses the
**CIFAR-10 (32×32) parameters** of the authors' generator, ``make_cifar_c.py`` in
github.com/hendrycks/robustness (``ImageNet-C/create_c/``), *not* the ImageNet-C ones that the
``imagecorruptions`` package hard-codes.  The building blocks come from that package (the
maintained fork ``imagecorruptions-imaug``, which works with NumPy 2 and SciPy ≥ 1.14; the
original ``imagecorruptions`` 1.1.2 uses ``np.float_`` and ``pkg_resources`` and fails to import):
its plasma fractal, zoom, disk kernel, numba pixel shuffle, motion-blur kernel and frost
photographs.  ``docs/shift.md`` lists every parameter with its source.

Known differences from the published CIFAR-10-C files:
  * motion blur (and the motion blur inside snow) uses ``imagecorruptions``' numpy kernel in
    place of ImageMagick's ``MotionBlurImage`` (Wand), with the same radius, sigma and angle range;
  * the random draws differ (the published files come from an unseeded run); here every image's
    corruption is seeded by (seed, family, severity, index), so a set is the same on every machine;
  * ``frost`` crops the package's frost photographs after a ×0.2 resize as the CIFAR generator
    does (it draws from the first five of six, as the generator's ``randint(5)`` does).

Every corruption maps a uint8 (32, 32, 3) image to a uint8 (32, 32, 3) image.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import zlib
from collections.abc import Callable, Iterator

import numpy as np

FAMILIES = {  # the four groups of CIFAR-10-C / Ovadia et al. (2019)
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS = tuple(name for names in FAMILIES.values() for name in names)
SEVERITIES = (1, 2, 3, 4, 5)

# CIFAR-10-C parameters, severity 1..5, as in make_cifar_c.py (hendrycks/robustness).
PARAMETERS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # std of additive N(0, c²) on [0, 1]
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson rate: Poisson(x·c)/c
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt-and-pepper amount
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, alias blur
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # σ, max shift, iterations
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma (angle ~ U(−45°, 45°))
    "zoom_blur": [(1.0, 1.06), (1.0, 1.11), (1.0, 1.16), (1.0, 1.21), (1.0, 1.26)],  # zooms arange(lo, hi, 0.01)
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    # snow: flake mean, flake std, zoom, threshold, blur radius, blur sigma, image weight
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image weight, frost weight
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # fog strength, fractal wibble decay
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # factor on the deviation from the mean
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    # elastic: displacement α, smoothing σ, affine jitter — each × image size 32
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # box-downsampling factor
    "jpeg_compression": [80, 65, 58, 50, 40],  # JPEG quality
}


@contextlib.contextmanager
def _legacy_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the ``imagecorruptions`` helpers that draw from it
    (plasma fractal), restoring the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, channel_axis=-1 if x.ndim == 3 else None)


def _motion(layer: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    from imagecorruptions.corruptions import _motion_blur

    return _motion_blur(layer, radius=radius, sigma=sigma, angle=angle)


def _frost_photos() -> list[np.ndarray]:
    import cv2

    photos = []
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"):
        with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as path:
            photo = cv2.imread(str(path))
        photos.append(cv2.resize(photo, (0, 0), fx=0.2, fy=0.2)[..., ::-1])  # BGR → RGB, ×0.2 as for CIFAR
    return photos


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            frost_photos: list[np.ndarray] | None = None) -> np.ndarray:
    """One uint8 (32, 32, 3) image under corruption ``name`` at ``severity`` (1–5); every random
    draw comes from ``rng``."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1–5, got {severity}")
    c = PARAMETERS[name][severity - 1]
    x = image.astype(np.float32) / 255.0
    out = _CORRUPTIONS[name](x, c, rng, frost_photos)
    return out if out.dtype == np.uint8 else (np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)  # truncated, as there


def _gaussian_noise(x, c, rng, _):
    return x + rng.normal(0.0, c, x.shape)


def _shot_noise(x, c, rng, _):
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng, _):
    from skimage.util import random_noise

    return random_noise(x, mode="s&p", amount=c, rng=int(rng.integers(2**31)))


def _defocus_blur(x, c, rng, _):
    import cv2
    from imagecorruptions.corruptions import disk

    kernel = disk(radius=c[0], alias_blur=c[1])
    return np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], -1)


def _glass_blur(x, c, rng, _):
    from imagecorruptions.corruptions import _shuffle_pixels_njit_glass_blur

    blurred = np.uint8(_gaussian(x, c[0]) * 255)
    shuffled = _shuffle_pixels_njit_glass_blur(32, 32, blurred, c, int(rng.integers(2**31)))
    return _gaussian(shuffled / 255.0, c[0])


def _motion_blur(x, c, rng, _):
    return _motion(x, c[0], c[1], rng.uniform(-45, 45))


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (bilinear), keeping the size: the centre ⌈h/factor⌉ crop
    is enlarged, then its centre h × w is kept (``imagecorruptions.clipped_zoom`` skips the final crop)."""
    from imagecorruptions.corruptions import clipped_zoom

    h, w = x.shape[:2]
    big = clipped_zoom(x, factor)
    top, left = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return big[top:top + h, left:left + w]


def _zoom_blur(x, c, rng, _):
    zooms = np.arange(c[0], c[1], 0.01)
    return (x + sum(_clipped_zoom(x, z) for z in zooms)) / (len(zooms) + 1)


def _snow(x, c, rng, _):
    import cv2

    flakes = rng.normal(c[0], c[1], x.shape[:2])
    flakes = _clipped_zoom(flakes[..., None], c[2])[..., 0]
    flakes[flakes < c[3]] = 0
    flakes = np.clip(flakes, 0, 1).astype(np.float32)
    streaks = _motion(flakes, c[4], c[5], rng.uniform(-135, -45))[..., None]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return x + streaks + np.rot90(streaks, k=2)


def _frost(x, c, rng, photos):
    photo = photos[int(rng.integers(len(photos)))]
    top, left = int(rng.integers(photo.shape[0] - 32)), int(rng.integers(photo.shape[1] - 32))
    return c[0] * x + c[1] * photo[top:top + 32, left:left + 32] / 255.0


def _fog(x, c, rng, _):
    from imagecorruptions.corruptions import plasma_fractal

    with _legacy_numpy_seed(int(rng.integers(2**31))):
        fractal = plasma_fractal(mapsize=32, wibbledecay=c[1])[:32, :32, None]
    peak = x.max()
    return (x + c[0] * fractal) * peak / (peak + c[0])


def _hsv_channel(x, channel: int, change: Callable[[np.ndarray], np.ndarray]):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x)
    hsv[..., channel] = np.clip(change(hsv[..., channel]), 0, 1)
    return hsv2rgb(hsv)


def _brightness(x, c, rng, _):
    return _hsv_channel(x, 2, lambda v: v + c)


def _contrast(x, c, rng, _):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * c + mean


def _elastic_transform(x, c, rng, _):
    import cv2
    from scipy.ndimage import map_coordinates

    alpha, sigma, jitter = (v * 32 for v in c)
    centre, half = np.float32([16, 16]), 32 // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + rng.uniform(-jitter, jitter, src.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(src, dst), (32, 32), borderMode=cv2.BORDER_REFLECT_101)
    if alpha == 0:
        return x
    from skimage.filters import gaussian

    dx = gaussian(rng.uniform(-1, 1, (32, 32)), sigma, mode="reflect", truncate=3) * alpha
    dy = gaussian(rng.uniform(-1, 1, (32, 32)), sigma, mode="reflect", truncate=3) * alpha
    cols, rows, chans = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
    coords = (rows + dy[..., None]).ravel(), (cols + dx[..., None]).ravel(), chans.ravel()
    return map_coordinates(x, coords, order=1, mode="reflect").reshape(x.shape)


def _pixelate(x, c, rng, _):
    from PIL import Image

    img = Image.fromarray((x * 255 + 0.5).astype(np.uint8))
    small = img.resize((int(32 * c), int(32 * c)), Image.Resampling.BOX)
    return np.asarray(small.resize((32, 32), Image.Resampling.BOX))


def _jpeg_compression(x, c, rng, _):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((x * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf).convert("RGB"))


_CORRUPTIONS = {name: globals()[f"_{name}"] for name in CORRUPTIONS}


def corrupted_set(images: np.ndarray, name: str, severity: int, seed: int = 0,
                  frost_photos: list[np.ndarray] | None = None) -> np.ndarray:
    """``images`` (N, 32, 32, 3) uint8 under one corruption and severity; the image at position i
    is seeded by (seed, corruption, severity, i), so a set is reproducible and its first k images
    do not depend on N."""
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValueError(f"corruptions expect uint8 (N, 32, 32, 3) images, got {images.dtype} {images.shape}")
    if name == "frost" and frost_photos is None:
        frost_photos = _frost_photos()
    key = zlib.crc32(name.encode())
    out = np.empty_like(images)
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, key, severity, i])
        out[i] = corrupt(image, name, severity, rng, frost_photos)
    return out
