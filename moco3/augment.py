"""MoCo v3 augmentations on uint8 image tensors: the two asymmetric views, eval and probe.

The official recipe (main_moco.py, BYOL's augmentations), applied to each view:

    RandomResizedCrop(S, scale=(crop_min, 1)) -> ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8
    -> RandomGrayscale p=0.2 -> GaussianBlur sigma~U[0.1, 2] -> Solarize(128)
    -> HorizontalFlip p=0.5 -> ToTensor -> Normalize(ImageNet mean, std)
    view 1: blur p=1.0, solarize p=0      view 2: blur p=0.1, solarize p=0.2

Why it is fast (benchmarks/augmentation.py measures it against the official pipeline; the
figures are in the README):
* The crop-resize, the only step that touches the full-size image, runs on uint8 with
  torch's vectorised antialiased bilinear kernel (the one transforms.v2's resized_crop
  calls, with identical output), fastest on channels-last memory such as pil_to_tensor's
  output and moco3's in-memory datasets.
* The small crop is converted to float once; the colour ops then run on float in [0,1] with
  per-image parameters, so one image and a batch share one code path. A batch pays the
  Python overhead once per op: the fast path for small images (at 224 px a batch no longer
  fits the cache and image by image is faster).
* Separable blur truncated at 3 sigma; hue rotation by a branch-free HSV formula; masks made
  with float comparisons (bool masks and torch.where are slow on CPU); random draws as one
  torch.rand call per view, the arithmetic on them in numpy.

Every random draw uses torch's global generator, so torch.manual_seed makes the views
deterministic (DataLoader workers seed it per worker). The draws of the last call are kept
in `last_params` (one ViewParams per view) for tests and inspection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JITTER_STRENGTH = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
BLUR_TRUNCATE = 3.0  # kernel radius in sigmas (capped by the kernel size)
SOLARIZE_THRESHOLD = 128  # in uint8 units, as PIL.ImageOps.solarize
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision (PIL: 299/587/114)

Images = Tensor | Sequence[Tensor]  # uint8 (B,3,H,W), or a list of (3,H,W) of any sizes


@dataclass(frozen=True)
class ViewRecipe:
    """What differs between the two views: the probabilities of blur and solarize."""

    blur_p: float
    solarize_p: float


VIEW1 = ViewRecipe(blur_p=1.0, solarize_p=0.0)
VIEW2 = ViewRecipe(blur_p=0.1, solarize_p=0.2)


@dataclass
class ViewParams:
    """The random draws of one view for n images (numpy arrays, leading dimension n)."""

    crop: np.ndarray  # (n,4) int64: top, left, height, width in the source image
    jitter: np.ndarray  # (n,) bool: colour jitter applied
    factors: np.ndarray  # (n,4) float: brightness, contrast, saturation factors and hue shift
    order: np.ndarray  # (n,4) int64: the order of the four jitter ops (a permutation of 0..3)
    grayscale: np.ndarray  # (n,) bool
    blur: np.ndarray  # (n,) bool
    sigma: np.ndarray  # (n,) float: blur sigma (drawn for every image, used where blur)
    solarize: np.ndarray  # (n,) bool
    flip: np.ndarray  # (n,) bool


def blur_kernel_size(img_size: int) -> int:
    """Odd kernel covering 3 sigma of the widest blur (13 taps for sigma 2), whatever the
    image size: the blur must be as strong as the official PIL blur of the same sigma at
    32 px as at 224 px. Capped where reflect padding needs it (2 * img_size - 1)."""
    return min(2 * math.ceil(BLUR_TRUNCATE * BLUR_SIGMA[1]) + 1, 2 * img_size - 1)


# ---------------------------------------------------------------- random parameters
# One torch.rand call per view (torch's generator, so torch.manual_seed governs it); the
# arithmetic on the draws runs in numpy, which is ~5x cheaper than torch on tiny arrays.

_CROP_ATTEMPTS = 10
_CROP_UNIFORMS = 2 * _CROP_ATTEMPTS + 2
_JITTER_LO = np.array([1 - JITTER_STRENGTH[0], 1 - JITTER_STRENGTH[1], 1 - JITTER_STRENGTH[2],
                       -JITTER_STRENGTH[3]])
_JITTER_HI = np.array([1 + JITTER_STRENGTH[0], 1 + JITTER_STRENGTH[1], 1 + JITTER_STRENGTH[2],
                       JITTER_STRENGTH[3]])


def crop_boxes_from_uniforms(heights: np.ndarray, widths: np.ndarray,
                             scale: tuple[float, float], ratio: tuple[float, float],
                             u: np.ndarray) -> np.ndarray:
    """RandomResizedCrop boxes (n,4: top, left, height, width) from uniforms u (n, 2A+2).

    torchvision's rule, vectorised: A attempts of area ~ U[scale] * H * W and log aspect
    ratio ~ U[log ratio]; the first that fits is placed uniformly at random; if none fits,
    the central crop at the nearest allowed aspect ratio.
    """
    if len(u) == 1:  # one image: the plain loop is ~10x cheaper than numpy on tiny arrays
        return np.array([_crop_box(int(heights[0]), int(widths[0]), scale, ratio, u[0])])
    attempts = (u.shape[1] - 2) // 2
    h_img, w_img = heights.astype(np.float64), widths.astype(np.float64)
    area = (h_img * w_img)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, attempts:2 * attempts])
    w = np.round(np.sqrt(target * aspect))  # round half to even, like Python's round()
    h = np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= w_img[:, None]) & (h > 0) & (h <= h_img[:, None])
    first = fits.argmax(axis=1)[:, None]  # the first fitting attempt
    w, h = np.take_along_axis(w, first, 1)[:, 0], np.take_along_axis(h, first, 1)[:, 0]
    top = np.floor(u[:, -2] * (h_img - h + 1))
    left = np.floor(u[:, -1] * (w_img - w + 1))
    found = fits.any(axis=1)
    if not found.all():
        in_ratio = w_img / h_img
        fw = np.where(in_ratio > ratio[1], np.round(h_img * ratio[1]), w_img)
        fh = np.where(in_ratio < ratio[0], np.round(w_img / ratio[0]), h_img)
        w, h = np.where(found, w, fw), np.where(found, h, fh)
        top = np.where(found, top, np.floor((h_img - h) / 2))
        left = np.where(found, left, np.floor((w_img - w) / 2))
    return np.stack([top, left, h, w], axis=1).astype(np.int64)


Generators = Sequence[torch.Generator] | None  # one per image, or None: the global generator


def uniforms(n: int, k: int, generators: Generators = None) -> np.ndarray:
    """(n,k) U[0,1) draws: from torch's global generator, or row i from generators[i].

    Row i from generators[i] equals what torch.rand(1, k) gives after torch.manual_seed(s)
    when generators[i] was seeded with s: per-image seeding gives the same views batched or
    not.
    """
    if generators is None:
        return torch.rand(n, k, dtype=torch.float64).numpy()
    return torch.stack([torch.rand(k, dtype=torch.float64, generator=g)
                        for g in generators]).numpy()


def _crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
              u: np.ndarray) -> tuple[int, int, int, int]:
    """crop_boxes_from_uniforms for one image, written as torchvision's loop."""
    attempts = (len(u) - 2) // 2
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(attempts):
        target = height * width * (scale[0] + (scale[1] - scale[0]) * float(u[k]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(u[attempts + k]))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (math.floor(float(u[-2]) * (height - h + 1)),
                    math.floor(float(u[-1]) * (width - w + 1)), h, w)
    in_ratio = width / height
    w, h = width, height
    if in_ratio < ratio[0]:
        h = round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w = round(height * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def sample_crop_boxes(heights: np.ndarray, widths: np.ndarray, scale: tuple[float, float],
                      ratio: tuple[float, float] = CROP_RATIO,
                      generators: Generators = None) -> np.ndarray:
    """RandomResizedCrop boxes (n,4) for n images of sizes heights, widths (n,)."""
    u = uniforms(len(heights), _CROP_UNIFORMS, generators)
    return crop_boxes_from_uniforms(np.asarray(heights), np.asarray(widths), scale, ratio, u)


def sample_view_params(heights: np.ndarray, widths: np.ndarray, recipe: ViewRecipe,
                       scale: tuple[float, float], generators: Generators = None) -> ViewParams:
    """Draw one view's parameters for n images, in the order the official pipeline draws."""
    u = uniforms(len(heights), _CROP_UNIFORMS + 14, generators)
    crop = crop_boxes_from_uniforms(np.asarray(heights), np.asarray(widths), scale, CROP_RATIO,
                                    u[:, :_CROP_UNIFORMS])
    v = u[:, _CROP_UNIFORMS:]
    return ViewParams(
        crop=crop,
        jitter=v[:, 0] < JITTER_P,
        order=np.argsort(v[:, 1:5], axis=1),  # a uniform random permutation per image
        factors=_JITTER_LO + (_JITTER_HI - _JITTER_LO) * v[:, 5:9],
        grayscale=v[:, 9] < GRAYSCALE_P,
        blur=v[:, 10] < recipe.blur_p,
        sigma=BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * v[:, 11],
        solarize=v[:, 12] < recipe.solarize_p,
        flip=v[:, 13] < 0.5,
    )


# ---------------------------------------------------------------- ops on float (n,3,H,W) in [0,1]
# Divergence: the official pipeline (PIL) rounds to uint8 after every op; we stay in float
# until the end (differences below 0.5/255 per op; contrast's mean and saturation's grey are
# likewise not rounded, and the hue is rotated exactly rather than in PIL's 8-bit HSV).

PerImage = np.ndarray | Tensor | float  # one value per image, shape (n,)


def _per_image(v: PerImage, x: Tensor) -> Tensor | float:
    """A per-image value broadcastable against x (n,3,H,W); a float when n is 1 (cheaper)."""
    if isinstance(v, float | int):
        return float(v)
    if len(v) == 1:
        return float(v[0])
    t = torch.from_numpy(np.asarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v
    return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def rgb_to_gray(x: Tensor) -> Tensor:
    """(n,3,H,W) -> (n,1,H,W) luma."""
    r, g, b = x.unbind(1)
    return (r * _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze(1)


def _clamp_(x: Tensor, factor: Tensor | float) -> Tensor:
    """Clamp a blend result to [0,1]; a scalar factor <= 1 blends inside [0,1], no clamp."""
    return x if isinstance(factor, float) and factor <= 1.0 else x.clamp_(0.0, 1.0)


def adjust_brightness_(x: Tensor, factor: PerImage) -> Tensor:
    """Blend with black: x * factor, clamped. In place."""
    f = _per_image(factor, x)
    return _clamp_(x.mul_(f), f)


def adjust_contrast(x: Tensor, factor: PerImage) -> Tensor:
    """Blend with the image's mean grey: mean + factor * (x - mean), clamped. (n,3,H,W)."""
    f = _per_image(factor, x)
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _clamp_(torch.lerp(mean.expand_as(x), x, f), f)


def adjust_saturation(x: Tensor, factor: PerImage) -> Tensor:
    """Blend with the per-pixel grey: grey + factor * (x - grey), clamped. (n,3,H,W)."""
    f = _per_image(factor, x)
    return _clamp_(torch.lerp(rgb_to_gray(x).expand_as(x), x, f), f)


_HUE_OFFSETS = torch.tensor([0.0, -2.0, -4.0]).view(1, 3, 1, 1)  # -2c: r, g, b, in sixths


def adjust_hue(x: Tensor, shift: PerImage) -> Tensor:
    """Rotate the HSV hue by `shift` turns, keeping value and saturation. (n,3,H,W).

    Same result as torchvision's adjust_hue (RGB -> HSV -> RGB) without the HSV round trip:
    max M and min m are kept and channel c becomes m + (M - m) * w(t_c), with t_c = 6 * (hue
    + shift) - 2c (mod 6) and w(t) = clamp(|t - 3| - 1, 0, 1) the HSV channel curve.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    # 0/1 float masks of the max channel (r before g before b, as torchvision); lerp with a
    # 0/1 weight selects exactly
    is_r = torch.eq(maxc, r, out=torch.empty_like(maxc))
    is_g = torch.eq(maxc, g, out=torch.empty_like(maxc))
    # 6 * hue * delta, sector by sector (grey pixels, delta 0, come out unchanged anyway)
    h6 = torch.lerp((r - g).add_(delta, alpha=4.0), (b - r).add_(delta, alpha=2.0), is_g)
    h6 = torch.lerp(h6, g - b, is_r).div_(delta.clamp_min(1e-12))  # in [-1, 5]
    s = _per_image(shift, x)
    offsets = _HUE_OFFSETS.to(device=x.device, dtype=x.dtype)
    if _max_abs(shift) <= 1.0 / 6.0:  # ColorJitter's 0.1: t below stays within [-6, 6]
        offsets = offsets + 6.0 * s
    else:  # fold hue + shift into [0, 6) first
        h6 = h6.add_(6.0 * s if isinstance(s, float) else 6.0 * s[:, 0])
        h6 = h6.sub_(h6.div(6.0).floor_().mul_(6.0))
    # w is 6-periodic and even, so on t_c = hue + shift - 2c (sixths) within [-6, 6] it is
    # w(|t|) = clamp(||t| - 3| - 1, 0, 1): no per-channel modulo needed
    t = h6.unsqueeze(1) + offsets
    w = t.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)  # w + 1
    # m + delta * ((w + 1) - 1) = (m - delta) + delta * (w + 1)
    return torch.addcmul((minc - delta).unsqueeze(1), delta.unsqueeze(1), w)


def _max_abs(v: PerImage) -> float:
    if isinstance(v, Tensor):
        return float(v.abs().max())
    return float(np.max(np.abs(v)))


def to_grayscale3(x: Tensor) -> Tensor:
    """(n,3,H,W) -> (n,3,H,W) with the luma in all three channels."""
    return rgb_to_gray(x).expand_as(x).contiguous()


def gaussian_kernels(sigma: np.ndarray, kernel_size: int) -> np.ndarray:
    """(n,) sigmas -> (n, 2r+1) normalised 1-D Gaussians, r <= kernel_size // 2.

    Each image's taps stop at 3 of its own sigmas (BLUR_TRUNCATE; zeros beyond, up to the
    widest kernel of the batch), so an image is blurred the same alone or in a batch, and
    the blur costs half as much at 224 px; the taps left out hold < 0.2% of the mass, so an
    output pixel moves by < 0.3/255 (less than the uint8 rounding of the official pipeline).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    own = np.minimum(kernel_size // 2,
                     np.maximum(1, np.ceil(BLUR_TRUNCATE * sigma))).astype(np.int64)  # (n,)
    radius = int(own.max())
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    k[np.abs(taps)[None, :] > own[:, None]] = 0.0
    return k / k.sum(axis=1, keepdims=True)


def gaussian_blur(x: Tensor, sigma: np.ndarray, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with reflect padding, one sigma per image. (n,3,H,W).

    torchvision's GaussianBlur(kernel_size, sigma) computed as two 1-D passes (identical to
    its 2-D kernel, which is separable) of shifted multiply-adds, which on CPU beat torch's
    depthwise convolution several times for such small kernels; taps within 3 sigma only.
    """
    # Divergence: the official blur is PIL's GaussianBlur(radius=sigma), three box blurs
    # that approximate a Gaussian of that sigma; we apply the Gaussian itself, truncated at
    # 3 sigma (see gaussian_kernels), with reflect padding: as strong as PIL's at every
    # sigma and image size (test_augment compares the two). Not SimCLR/BYOL's kernel of
    # 10 % of the image, which at 32 px (3 taps) would blur at sigma 2 only 0.6x as much.
    kernels = gaussian_kernels(sigma, kernel_size)
    taps = kernels.shape[1]
    radius = taps // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    if len(kernels) == 1:
        weights: list = kernels[0].tolist()
    else:
        kt = torch.from_numpy(kernels.astype(np.float32)).to(x.device)
        weights = [kt[:, i].view(-1, 1, 1, 1) for i in range(taps)]

    def accumulate(window: Callable[[int], Tensor]) -> Tensor:
        out = window(0) * weights[0]
        for i in range(1, taps):
            if isinstance(weights[i], float):
                out.add_(window(i), alpha=weights[i])
            else:
                out.addcmul_(window(i), weights[i])
        return out

    rows = accumulate(lambda i: padded[..., i:i + width])  # along W: (n,3,H+2r,W)
    return accumulate(lambda i: rows[..., i:i + height, :])  # along H: (n,3,H,W)


def solarize_(x: Tensor, threshold: int = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert values >= threshold (uint8 units): x -> 1 - x there. In place.

    On float input the cut is at (threshold - 0.5) / 255, so a value that would round to
    threshold in uint8 is inverted, exactly as on the rounded image.
    """
    above = torch.ge(x, (threshold - 0.5) / 255.0, out=torch.empty_like(x))
    return x.addcmul_(above, x.mul(-2.0).add_(1.0))


def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


@lru_cache(maxsize=32)
def _norm_constants(mean: tuple[float, ...], std: tuple[float, ...], scale: float,
                    device: torch.device) -> tuple[Tensor, Tensor]:
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) / scale
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) / scale
    return m, s


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float],
              scale: float = 1.0) -> Tensor:
    """(x * scale - mean) / std per channel: (n,3,H,W) -> new float tensor."""
    m, s = _norm_constants(tuple(mean), tuple(std), float(scale), x.device)
    return (x - m).div_(s)  # faster on CPU than one broadcasting addcmul


def _apply_where(x: Tensor, mask: np.ndarray, fn: Callable[..., Tensor],
                 *args: np.ndarray) -> Tensor:
    """x[mask] <- fn(x[mask], *(a[mask] for a in args)); no copy when the mask is all/none."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return x
    if len(idx) == len(mask):
        return fn(x, *args)
    sel = torch.from_numpy(idx).to(x.device)
    return x.index_copy_(0, sel, fn(x.index_select(0, sel), *(a[idx] for a in args)))


_JITTER_OPS = (adjust_brightness_, adjust_contrast, adjust_saturation, adjust_hue)


def apply_view(x: Tensor, params: ViewParams, kernel_size: int) -> Tensor:
    """Everything after the crop: jitter, grayscale, blur, solarize, flip. float (n,3,H,W)."""
    if len(x) == 1 and params.jitter[0]:
        for k in params.order[0]:
            x = _JITTER_OPS[k](x, params.factors[:, k])
    elif len(x) > 1 and params.jitter.any():
        for position in range(4):  # ColorJitter applies its ops in a random order per image
            for k, op in enumerate(_JITTER_OPS):
                mask = params.jitter & (params.order[:, position] == k)
                x = _apply_where(x, mask, op, params.factors[:, k])
    x = _apply_where(x, params.grayscale, to_grayscale3)
    x = _apply_where(x, params.blur, lambda v, s: gaussian_blur(v, s, kernel_size),
                     params.sigma)
    x = _apply_where(x, params.solarize, solarize_)
    return _apply_where(x, params.flip, hflip)


# ---------------------------------------------------------------- crops


def image_sizes(images: Images) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths (n,) of a batch tensor or a list of images."""
    if isinstance(images, Tensor):
        n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        return np.full(n, h), np.full(n, w)
    return np.array([im.shape[-2] for im in images]), np.array([im.shape[-1] for im in images])


def _check_uint8(images: Images) -> None:
    first = images if isinstance(images, Tensor) else images[0]
    if first.dtype != torch.uint8 or first.ndim not in (3, 4) or first.shape[-3] != 3:
        raise TypeError(f"expected uint8 RGB images (...,3,H,W), got {first.dtype} "
                        f"{tuple(first.shape)}")


def crop_resize(images: Images, boxes: np.ndarray, size: int) -> Tensor:
    """Crop boxes (n,4: top, left, height, width), resize to size x size (antialiased
    bilinear, as transforms.v2.functional.resized_crop): uint8 in, float [0,1] (n,3,S,S) out.

    On CPU the resize runs on uint8 (torch's AVX2 kernel, as transforms.v2 does); elsewhere
    on float. Each image is converted to float once, straight into the output batch.
    """
    # Divergence: the official crop resizes PIL images with PIL's bilinear filter; torch's
    # antialiased bilinear kernel was written to match it and differs by at most one uint8
    # step here and there.
    device = images.device if isinstance(images, Tensor) else images[0].device
    out = torch.empty(len(boxes), 3, size, size, device=device)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        patch = images[i][None, :, top:top + h, left:left + w]
        if device.type != "cpu":
            patch = patch.float()
        if (h, w) != (size, size):
            patch = F.interpolate(patch, size=(size, size), mode="bilinear",
                                  align_corners=False, antialias=True)
        torch.mul(patch, 1.0 / 255.0, out=out[i:i + 1])
    return out


# ---------------------------------------------------------------- transforms


def _generators(seeds: Sequence[int] | None) -> Generators:
    return None if seeds is None else [torch.Generator().manual_seed(int(s)) for s in seeds]


class TwoViewTransform:
    """uint8 (3,H,W) -> (view1, view2), each float (3,S,S) normalised; the MoCo v3 recipe.

    apply_batch does the same for uint8 (B,3,H,W) (or a list of images of any sizes) with
    the Python overhead paid once per op for the whole batch: the fast path for small images.
    """

    def __init__(self, img_size: int = 224, crop_min: float = 0.08,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 recipes: tuple[ViewRecipe, ViewRecipe] = (VIEW1, VIEW2)) -> None:
        self.img_size = img_size
        self.scale = (crop_min, 1.0)
        self.mean, self.std = tuple(mean), tuple(std)
        self.recipes = recipes
        self.kernel_size = blur_kernel_size(img_size)
        self.last_params: tuple[ViewParams, ...] | None = None

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        v1, v2 = self.apply_batch(image.unsqueeze(0))
        return v1[0], v2[0]

    def apply_batch(self, images: Images,
                    seeds: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """seeds: one per image to draw image i's views from its own generator (as
        torch.manual_seed(seeds[i]) then __call__ would), else torch's global generator."""
        _check_uint8(images)
        heights, widths = image_sizes(images)
        generators = _generators(seeds)
        views, params = [], []
        for recipe in self.recipes:
            p = sample_view_params(heights, widths, recipe, self.scale, generators)
            x = apply_view(crop_resize(images, p.crop, self.img_size), p, self.kernel_size)
            views.append(normalize(x, self.mean, self.std))
            params.append(p)
        self.last_params = tuple(params)
        return views[0], views[1]

    def __repr__(self) -> str:
        return (f"TwoViewTransform(img_size={self.img_size}, crop_min={self.scale[0]}, "
                f"blur_kernel={self.kernel_size}, recipes={self.recipes})")


class ProbeTrainTransform:
    """Linear-probe training: RandomResizedCrop(S, scale) + flip + normalise (official)."""

    def __init__(self, img_size: int = 224, crop_min: float = 0.08,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.img_size = img_size
        self.scale = (crop_min, 1.0)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Tensor) -> Tensor:
        return self.apply_batch(image.unsqueeze(0))[0]

    def apply_batch(self, images: Images, seeds: Sequence[int] | None = None) -> Tensor:
        """seeds: one per image, as in TwoViewTransform.apply_batch."""
        _check_uint8(images)
        heights, widths = image_sizes(images)
        generators = _generators(seeds)
        boxes = sample_crop_boxes(heights, widths, self.scale, CROP_RATIO, generators)
        flip = uniforms(len(boxes), 1, generators)[:, 0] < 0.5
        x = _apply_where(crop_resize(images, boxes, self.img_size), flip, hflip)
        return normalize(x, self.mean, self.std)


class EvalTransform:
    """Resize the short side to S / crop_fraction, centre-crop S, normalise.

    crop_fraction 0.875 is the official Resize(256) + CenterCrop(224); 1.0 keeps the whole
    (square) image, e.g. for 32 px datasets evaluated at 32 px.
    """

    def __init__(self, img_size: int = 224, crop_fraction: float = 0.875,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.img_size = img_size
        self.resize = int(round(img_size / crop_fraction))
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Tensor) -> Tensor:
        return self.apply_batch(image.unsqueeze(0))[0]

    def apply_batch(self, images: Images) -> Tensor:
        _check_uint8(images)
        if not isinstance(images, Tensor):
            return torch.cat([self.apply_batch(im.unsqueeze(0)) for im in images])
        x = TF.resize(images, [self.resize], antialias=True)
        x = TF.center_crop(x, [self.img_size, self.img_size])
        return normalize(x, self.mean, self.std, scale=1.0 / 255.0)
