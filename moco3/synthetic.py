"""Procedural shape images: the built-in dataset that needs nothing on disk.

Ten classes defined by shape alone (disk, ring, square, frame, triangle, plus, star, stripes,
checkerboard, crescent). Everything else is a nuisance drawn at random per image: the
foreground and background colours (luminance apart by at least 0.25, so the shape survives
grayscale and jitter), the position, scale (radius 8 to 14 px at 32 px) and rotation of the
shape, a smooth background texture with a faint grating, and pixel noise. Colour
never carries the class, so the colour-jitter and grayscale augmentations cannot destroy the
label, while raw pixels (dominated by colour and position) give a poor nearest-neighbour
classifier (28 % at 10k / 2k, 32 px, where a small CNN trained 5 epochs in 1.5 CPU
minutes reaches 97 %: benchmarks/synthetic_data.py).

Image i depends only on (seed, split, i) and the image size: every random quantity has
its own stream drawn in index order, so a set of n images is a prefix of any larger set
with the same seed. The label of image i is i % 10 (classes exactly balanced when n is a
multiple of 10). Train and val use different streams (the split is part of the seed).
"""

from __future__ import annotations

import math

import numpy as np

SHAPES: tuple[str, ...] = (
    "disk", "ring", "square", "frame", "triangle", "plus", "star", "stripes", "checker",
    "crescent",
)
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1}

# Shape radius as a fraction of the half image width: 0.5 -> 8 px radius at 32 px, about the
# smallest size at which the finest structure (checker cells, frame hole) is still visible.
_RADIUS_RANGE = (0.5, 0.85)
_CHUNK = 1024  # images rendered at once: temporaries stay small enough to be reused
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _streams(seed: int, split: str) -> dict[str, np.random.Generator]:
    """One independent generator per random quantity, keyed by (seed, split)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    names = ("geometry", "colour", "texture", "noise")
    children = np.random.SeedSequence([int(seed), SPLIT_IDS[split]]).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background RGB in [0,1], (n,3) each, luminance apart by >= 0.25.

    Contrast is what keeps the shape visible after colour jitter; hue and saturation are free.
    """
    u = rng.random((n, 8), dtype=np.float32)
    bg_luma = 0.15 + 0.7 * u[:, 0]
    sign = np.where(u[:, 1] < 0.5, -1.0, 1.0).astype(np.float32)
    gap = 0.25 + 0.25 * u[:, 2]
    fg_luma = bg_luma + sign * gap
    # flip the direction where the foreground would leave [0.05, 0.95]
    out = (fg_luma < 0.05) | (fg_luma > 0.95)
    fg_luma = np.where(out, bg_luma - sign * gap, fg_luma)

    def with_chroma(luma: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # chroma direction orthogonal to the luma weights, so luminance stays as drawn
        angle = 2 * np.pi * a
        d1 = np.array([1.0, -1.0, 0.0], dtype=np.float32)
        d1 -= _LUMA * (d1 @ _LUMA) / (_LUMA @ _LUMA)
        d2 = np.cross(_LUMA, d1).astype(np.float32)
        d1 /= np.linalg.norm(d1)
        d2 /= np.linalg.norm(d2)
        chroma = 0.35 * b[:, None] * (np.cos(angle)[:, None] * d1 + np.sin(angle)[:, None] * d2)
        return np.clip(luma[:, None] + chroma, 0.0, 1.0)

    return with_chroma(fg_luma, u[:, 3], u[:, 4]), with_chroma(bg_luma, u[:, 5], u[:, 6])


def _shape_sdf(name: str, ux: np.ndarray, uy: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Coverage in [0,1] of shape `name` at local coordinates (shape radius 1).

    ux, uy: (n,S,S) local coordinates; pix: (n,1,1) size of one pixel in local units.
    Signed distances (negative inside) are turned into anti-aliased coverage.
    """

    def cover(d: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - d / pix, 0.0, 1.0)

    r = np.sqrt(ux * ux + uy * uy)
    ax, ay = np.abs(ux), np.abs(uy)
    box = np.maximum(ax, ay)
    if name == "disk":
        return cover(r - 0.85)
    if name == "ring":
        return cover(np.abs(r - 0.7) - 0.25)
    if name == "square":
        return cover(box - 0.68)
    if name == "frame":
        return cover(np.abs(box - 0.55) - 0.16)
    if name == "triangle":
        d = np.full_like(ux, -np.inf)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            d = np.maximum(d, math.cos(a) * ux + math.sin(a) * uy)
        return cover(d - 0.5)
    if name == "plus":
        arm_h = np.maximum(ax - 0.9, ay - 0.28)
        arm_v = np.maximum(ax - 0.28, ay - 0.9)
        return cover(np.minimum(arm_h, arm_v))
    if name == "star":
        t = np.arctan2(uy, ux) * (5 / (2 * math.pi))
        spike = np.abs(2 * (t - np.floor(t)) - 1)  # 1 at the 5 points, 0 between them
        return cover(r - (0.42 + 0.58 * spike))
    if name == "stripes":
        v = ux / 0.6
        bars = np.abs(v - np.round(v)) * 0.6 - 0.15
        return cover(np.maximum(r - 0.9, bars))
    if name == "checker":
        vx, vy = ux / 0.8, uy / 0.8
        sx = cover(np.abs(vx - np.round(vx)) * 0.8 - 0.2)
        sy = cover(np.abs(vy - np.round(vy)) * 0.8 - 0.2)
        return (sx + sy - 2 * sx * sy) * cover(box - 0.8)
    if name == "crescent":
        bite = np.sqrt((ux - 0.4) ** 2 + uy * uy) - 0.75
        return cover(np.maximum(r - 0.9, -bite))
    raise ValueError(f"unknown shape {name!r}; valid: {', '.join(SHAPES)}")


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) bilinear interpolation matrix, align_corners=False."""
    pos = (np.arange(dst, dtype=np.float32) + 0.5) * src / dst - 0.5
    pos = np.clip(pos, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src), dtype=np.float32)
    m[np.arange(dst), lo] += 1 - frac
    m[np.arange(dst), hi] += frac
    return m


def _render(start: int, n: int, img_size: int, streams: dict[str, np.random.Generator],
            geometry: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Render images start..start+n-1 as float32 (n,S,S,3) in [0,1]."""
    s = img_size
    tex = streams["texture"].random((n, 4 * 4 * 3 + 4), dtype=np.float32)
    # smooth background field: a 4x4 grid of random offsets, bilinearly upsampled
    up = _upsample_matrix(4, s)
    grid = (tex[:, :48].reshape(n, 4, 4, 3) - 0.5) * 2 * (0.04 + 0.1 * tex[:, 48])[:, None, None,
                                                                                     None]
    # separable upsampling, rows then columns: (n,4,4,3) -> (n,S,4,3) -> (n,S,S,3)
    field = np.matmul(up, np.matmul(up, grid.reshape(n, 4, 12)).reshape(n * s, 4, 3))
    field = field.reshape(n, s, s, 3)
    coords = (np.arange(s, dtype=np.float32) + 0.5) * (2.0 / s) - 1.0
    py, px = np.meshgrid(coords, coords, indexing="ij")
    # a faint grating in the background: random orientation and period, amplitude <= 0.06
    g_angle = 2 * np.pi * tex[:, 49, None, None]
    g_freq = (3.0 + 5.0 * tex[:, 50, None, None]) * np.pi
    grating = (0.06 * tex[:, 51, None, None]) * np.sin(
        g_freq * (np.cos(g_angle) * px + np.sin(g_angle) * py))
    img = field  # in place from here on: fresh large arrays cost more (page faults) than math
    img += bg[:, None, None, :]
    img += grating[..., None]

    cx, cy, radius, theta = (geometry[start:start + n, k, None, None] for k in range(4))
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    dx, dy = px - cx, py - cy
    ux = (cos_t * dx + sin_t * dy) / radius
    uy = (-sin_t * dx + cos_t * dy) / radius
    pix = (2.0 / s) / radius
    labels = (np.arange(start, start + n) % len(SHAPES))
    mask = np.empty((n, s, s), dtype=np.float32)
    for c, name in enumerate(SHAPES):
        sel = labels == c
        if sel.any():
            mask[sel] = _shape_sdf(name, ux[sel], uy[sel], pix[sel])
    towards_fg = np.subtract(fg[:, None, None, :], img)
    towards_fg *= mask[..., None]
    img += towards_fg  # img * (1 - mask) + fg * mask
    # uniform pixel noise of standard deviation 0.01 to 0.05 (uniform: 4x cheaper to draw)
    noise = streams["noise"].random((n, s, s, 3), dtype=np.float32)
    noise -= 0.5
    noise *= (math.sqrt(12.0) * (0.01 + 0.04 * geometry[start:start + n, 4]))[:, None, None,
                                                                                None]
    img += noise
    return np.clip(img, 0.0, 1.0, out=img)


def generate_shapes(num_images: int, img_size: int = 32, seed: int = 0,
                    split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The synthetic shapes split: images uint8 (N,S,S,3) and labels int64 (N,).

    Vectorised in chunks of images (moco3.data caches the result in memory).
    """
    if num_images < 0 or img_size < 8:
        raise ValueError(f"need num_images >= 0 and img_size >= 8, got {num_images}, {img_size}")
    streams = _streams(seed, split)
    n = num_images
    g = streams["geometry"].random((n, 5), dtype=np.float32)
    radius = _RADIUS_RANGE[0] + (_RADIUS_RANGE[1] - _RADIUS_RANGE[0]) * g[:, 2]
    reach = 1.0 - 0.7 * radius  # centre range: the shape may be clipped a little, not much
    geometry = np.stack([
        (2 * g[:, 0] - 1) * reach, (2 * g[:, 1] - 1) * reach, radius, 2 * np.pi * g[:, 3],
        g[:, 4],
    ], axis=1)
    fg, bg = _colours(streams["colour"], n)
    images = np.empty((n, img_size, img_size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        chunk = _render(start, stop - start, img_size, streams, geometry, fg[start:stop],
                        bg[start:stop])
        chunk *= 255.0
        images[start:stop] = np.rint(chunk, out=chunk)
    labels = np.arange(n, dtype=np.int64) % len(SHAPES)
    return images, labels
