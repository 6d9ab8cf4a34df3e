"""Procedural texture images: the built-in data of the CPU study scale (data=textures).

Ten classes defined by the pattern alone (stripes, checker, dots, rings, waves, grid,
zigzag, blobs, hatch, spiral). Everything else is drawn at random per image: the two
colours (at least 0.2 apart in mean intensity), the orientation, period (4 to 8 px at 32 px)
and phase of the pattern, the centre of the radial ones, and pixel noise. A pattern is
stationary, so any crop of an image still shows its class: the two augmented views of
MoCo share the class, and contrastive learning picks the pattern up within minutes on a
CPU. Raw pixels, dominated by colour, orientation and phase, give a poor nearest-neighbour
classifier (about 22 % at 2000 / 500 images, 32 px, chance 10 %), so a pre-trained encoder
has a clear floor to beat. The shapes of `moco3.synthetic` are the harder task; this is the
one a study scale of an hour per study can learn.

Image i depends only on (seed, split, i) and the image size: every random quantity has its
own stream drawn in index order, so a set of n images is a prefix of any larger set with
the same seed. The label of image i is i % 10.
"""

from __future__ import annotations

import numpy as np

TEXTURES: tuple[str, ...] = (
    "stripes", "checker", "dots", "rings", "waves", "grid", "zigzag", "blobs", "hatch",
    "spiral",
)
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1}
PERIOD_PX = (4.0, 8.0)  # at 32 px; scaled with the image size
BLOBS = 8  # blobs per image of the "blobs" class
NOISE_STD = 0.03


def _streams(seed: int, split: str) -> dict[str, np.random.Generator]:
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    names = ("pattern", "colour", "blobs", "noise")
    children = np.random.SeedSequence([int(seed), SPLIT_IDS[split], 7]).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children,
                                                                      strict=True)}


def _masks(cls: int, p: np.ndarray, blobs: np.ndarray, s: int) -> np.ndarray:
    """Foreground masks (n, s, s) of one class. p: (n, 5) angle, period, phase, cx, cy in
    pixels; blobs: (n, BLOBS, 3) x, y, radius in pixels."""
    coords = np.arange(s, dtype=np.float32)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    th, period, ph, cx, cy = (p[:, k, None, None] for k in range(5))
    u = np.cos(th) * x + np.sin(th) * y
    v = -np.sin(th) * x + np.cos(th) * y
    k = 2 * np.pi / period
    radius = np.hypot(x - cx, y - cy)
    name = TEXTURES[cls]
    if name == "stripes":
        return np.sin(k * u + ph) > 0
    if name == "checker":
        return (np.sin(k * u + ph) > 0) ^ (np.sin(k * v + ph) > 0)
    if name == "dots":
        return np.sin(k * u + ph) * np.sin(k * v + ph) > 0.5
    if name == "rings":
        return np.sin(k * radius + ph) > 0
    if name == "waves":
        return np.sin(k * u + 2.0 * np.sin(0.5 * k * v) + ph) > 0
    if name == "grid":
        return (np.abs(np.sin(0.5 * k * u + ph)) < 0.3) | (np.abs(np.sin(0.5 * k * v + ph)) < 0.3)
    if name == "zigzag":
        return np.sin(k * u + 3 * np.pi * np.abs((v / period) % 2 - 1) + ph) > 0
    if name == "blobs":
        field = np.zeros((len(p), s, s), dtype=np.float32)
        for b in range(BLOBS):
            bx, by, r = (blobs[:, b, j, None, None] for j in range(3))
            field += np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * r * r))
        return field > 0.5
    if name == "hatch":
        return (np.sin(k * u + ph) > 0.6) | (np.sin(k * (0.5 * u + 0.87 * v) + ph) > 0.6)
    angle = np.arctan2(y - cy, x - cx)  # spiral
    return np.sin(k * radius + 3 * angle + ph) > 0


def generate_textures(num_images: int, img_size: int = 32, seed: int = 0,
                      split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The textures split: images uint8 (N, S, S, 3) and labels int64 (N,)."""
    if num_images < 0 or img_size < 8:
        raise ValueError(f"need num_images >= 0 and img_size >= 8, got {num_images}, {img_size}")
    n, s = num_images, img_size
    streams = _streams(seed, split)
    scale = s / 32.0
    u = streams["pattern"].random((n, 5), dtype=np.float32)
    params = np.stack([2 * np.pi * u[:, 0],
                       scale * (PERIOD_PX[0] + (PERIOD_PX[1] - PERIOD_PX[0]) * u[:, 1]),
                       2 * np.pi * u[:, 2], s * u[:, 3], s * u[:, 4]], axis=1)
    b = streams["blobs"].random((n, BLOBS, 3), dtype=np.float32)
    blobs = np.stack([s * b[..., 0], s * b[..., 1], scale * (2 + 2 * b[..., 2])], axis=-1)
    colours = streams["colour"].random((n, 2, 3), dtype=np.float32)
    fg, bg = colours[:, 0], colours[:, 1]
    close = np.abs(fg.mean(1) - bg.mean(1)) < 0.2  # keep the pattern visible in grayscale
    bg[close] = 1 - fg[close]
    labels = np.arange(n, dtype=np.int64) % len(TEXTURES)
    mask = np.empty((n, s, s), dtype=bool)
    for cls in range(len(TEXTURES)):
        sel = labels == cls
        if sel.any():
            mask[sel] = _masks(cls, params[sel], blobs[sel], s)
    images = np.where(mask[..., None], fg[:, None, None, :], bg[:, None, None, :])
    images += streams["noise"].normal(0, NOISE_STD, images.shape).astype(np.float32)
    images = np.clip(images, 0, 1) * 255
    return np.rint(images).astype(np.uint8), labels
