"""moco3.augment: the two asymmetric views, their ops against torchvision, eval and probe."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter

from moco3 import augment as A
from moco3.data import build_dataset

torch.set_num_threads(1)

MEAN = torch.tensor(A.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(A.IMAGENET_STD).view(3, 1, 1)


def random_image(h: int = 40, w: int = 50, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def denormalise(v: torch.Tensor) -> torch.Tensor:
    return v * STD + MEAN


# ---------------------------------------------------------------- shapes and normalisation


def test_two_views_shape_dtype_and_range():
    t = A.TwoViewTransform(img_size=24)
    v1, v2 = t(random_image())
    for v in (v1, v2):
        assert v.shape == (3, 24, 24) and v.dtype == torch.float32
        pixels = denormalise(v)  # every op keeps [0,1]; normalisation is (x - mean) / std
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    b1, b2 = t.apply_batch(torch.stack([random_image(seed=s) for s in range(5)]))
    assert b1.shape == b2.shape == (5, 3, 24, 24)
    l1, l2 = t.apply_batch([random_image(30, 70), random_image(90, 20)])  # mixed sizes
    assert l1.shape == l2.shape == (2, 3, 24, 24)


def test_eval_transform_normalises_known_values():
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    out = A.EvalTransform(32, crop_fraction=1.0)(image)
    expected = (128 / 255 - MEAN) / STD
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, expected.expand(3, 32, 32), atol=1e-6, rtol=0)
    # 32 px at crop_fraction 1 is the identity before normalisation
    image = random_image(32, 32)
    assert torch.allclose(denormalise(A.EvalTransform(32, crop_fraction=1.0)(image)),
                          image.float() / 255, atol=1e-6)


def test_eval_transform_official_resize_then_centre_crop():
    image = random_image(60, 80)
    ours = A.EvalTransform(16)(image)  # resize short side to round(16 / 0.875) = 18, crop 16
    ref = T.Compose([T.Resize(18), T.CenterCrop(16), T.ConvertImageDtype(torch.float32),
                     T.Normalize(A.IMAGENET_MEAN, A.IMAGENET_STD)])(image)
    # v1 resizes uint8 tensors in float, v2 (ours) in uint8 fixed point: one uint8 step apart
    torch.testing.assert_close(ours, ref, atol=1.01 / 255 / min(A.IMAGENET_STD), rtol=0)
    batch = torch.stack([image, random_image(60, 80, seed=1)])
    torch.testing.assert_close(A.EvalTransform(16).apply_batch(batch)[0], ours)


def test_probe_transform_shape_and_flip_rate():
    torch.manual_seed(0)
    t = A.ProbeTrainTransform(16, crop_min=1.0)  # the crop keeps the whole image
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[:, :, :8] = 255  # left half white: a flip moves it to the right
    out = denormalise(t.apply_batch(image.expand(400, 3, 16, 16)))
    assert out.shape == (400, 3, 16, 16)
    right_brighter = (out[..., 8:].mean((1, 2, 3)) > out[..., :8].mean((1, 2, 3))).float()
    assert 0.4 < right_brighter.mean() < 0.6


def test_batched_path_keeps_the_device():
    # the meta device runs the shape logic with no data: any op that mixed in a CPU tensor
    # (which a CUDA batch would reject) fails here
    torch.manual_seed(0)
    x = torch.zeros(8, 3, 20, 20, dtype=torch.uint8, device="meta")
    for _ in range(3):
        v1, v2 = A.TwoViewTransform(16).apply_batch(x)
        assert v1.device.type == v2.device.type == "meta" and v1.shape == (8, 3, 16, 16)
    assert A.ProbeTrainTransform(16).apply_batch(x).device.type == "meta"
    assert A.EvalTransform(16).apply_batch(x).device.type == "meta"


def test_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        A.TwoViewTransform(16)(torch.rand(3, 16, 16))


# ---------------------------------------------------------------- the asymmetric recipe


def test_recipe_rates_over_many_images():
    torch.manual_seed(0)
    t = A.TwoViewTransform(img_size=8)
    n = 4000
    t.apply_batch(torch.zeros(n, 3, 8, 8, dtype=torch.uint8))
    p1, p2 = t.last_params
    assert p1.blur.all() and not p1.solarize.any()  # view 1: always blurred, never solarised
    tol = 0.025  # > 4 binomial standard deviations at n = 4000
    assert abs(p2.blur.mean() - 0.1) < tol
    assert abs(p2.solarize.mean() - 0.2) < tol
    for p in (p1, p2):
        assert abs(p.jitter.mean() - 0.8) < tol
        assert abs(p.grayscale.mean() - 0.2) < tol
        assert abs(p.flip.mean() - 0.5) < 2 * tol
        assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0
        f = p.factors
        assert f[:, :2].min() >= 0.6 and f[:, :2].max() <= 1.4  # brightness, contrast 0.4
        assert f[:, 2].min() >= 0.8 and f[:, 2].max() <= 1.2  # saturation 0.2
        assert np.abs(f[:, 3]).max() <= 0.1  # hue 0.1
        assert (np.sort(p.order, axis=1) == np.arange(4)).all()  # permutations


def test_per_image_path_records_its_draws():
    torch.manual_seed(1)
    t = A.TwoViewTransform(img_size=8)
    image = random_image(8, 8)
    blurred2 = solarized2 = 0
    for _ in range(400):
        t(image)
        p1, p2 = t.last_params
        assert p1.blur[0] and not p1.solarize[0]
        blurred2 += int(p2.blur[0])
        solarized2 += int(p2.solarize[0])
    assert 15 <= blurred2 <= 70  # 40 expected
    assert 50 <= solarized2 <= 115  # 80 expected


def test_solarisation_rate_is_visible_in_the_pixels():
    # A white image stays >= 0.59 through crop, jitter, grayscale and blur, so it comes out
    # dark exactly when solarised: view 1 never, view 2 about 20% of the time.
    torch.manual_seed(2)
    t = A.TwoViewTransform(img_size=8)
    v1, v2 = t.apply_batch(torch.full((3000, 3, 12, 12), 255, dtype=torch.uint8))
    dark1 = denormalise(v1).mean((1, 2, 3)) < 0.5
    dark2 = denormalise(v2).mean((1, 2, 3)) < 0.5
    assert not dark1.any()
    assert abs(dark2.float().mean().item() - 0.2) < 0.03
    assert np.array_equal(dark2.numpy(), t.last_params[1].solarize)


def test_trace_reproduces_the_output():
    # The recorded parameters are what was applied: replaying them gives the same views.
    torch.manual_seed(3)
    t = A.TwoViewTransform(img_size=16)
    batch = torch.stack([random_image(20, 24, seed=s) for s in range(12)])
    views = t.apply_batch(batch)
    for view, p in zip(views, t.last_params, strict=True):
        x = A.apply_view(A.crop_resize(batch, p.crop, 16), p, t.kernel_size)
        torch.testing.assert_close(A.normalize(x, A.IMAGENET_MEAN, A.IMAGENET_STD), view)


def test_batched_ops_equal_per_image_ops():
    torch.manual_seed(4)
    batch = torch.stack([random_image(20, 24, seed=s) for s in range(16)])
    p = A.sample_view_params(np.full(16, 20), np.full(16, 24), A.VIEW2, (0.08, 1.0))
    p.blur[:8] = True  # make every op appear on a strict subset
    p.solarize[::3] = True
    x = A.crop_resize(batch, p.crop, 16)
    together = A.apply_view(x.clone(), p, 3)
    for i in range(16):
        one = A.ViewParams(*(getattr(p, f)[i:i + 1] for f in p.__dataclass_fields__))
        torch.testing.assert_close(A.apply_view(x[i:i + 1].clone(), one, 3), together[i:i + 1],
                                   atol=1e-6, rtol=0)


def test_deterministic_under_manual_seed():
    image = random_image()
    t = A.TwoViewTransform(img_size=16)
    torch.manual_seed(5)
    a1, a2 = t(image)
    torch.manual_seed(5)
    b1, b2 = t(image)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    torch.manual_seed(6)
    c1, _ = t(image)
    assert not torch.equal(a1, c1)


def test_per_image_seeds_give_the_same_views_batched_or_not():
    images = [random_image(20, 24, seed=s) for s in range(6)]
    seeds = [11, 12, 13, 14, 15, 16]
    t = A.TwoViewTransform(img_size=16)
    b1, b2 = t.apply_batch(torch.stack(images), seeds=seeds)
    for i, image in enumerate(images):
        torch.manual_seed(seeds[i])
        v1, v2 = t(image)
        torch.testing.assert_close(v1, b1[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(v2, b2[i], atol=1e-5, rtol=0)
    shuffled = t.apply_batch(torch.stack(images[::-1]), seeds=seeds[::-1])
    torch.testing.assert_close(shuffled[0].flip(0), b1, atol=1e-5, rtol=0)
    p = A.ProbeTrainTransform(16)
    torch.manual_seed(seeds[2])
    torch.testing.assert_close(p(images[2]), p.apply_batch(torch.stack(images), seeds=seeds)[2])


def test_channels_last_and_contiguous_inputs_agree():
    hwc = random_image(30, 40).permute(1, 2, 0).contiguous()
    t = A.TwoViewTransform(img_size=16)
    torch.manual_seed(7)
    a = t(hwc.permute(2, 0, 1))  # CHW view of HWC memory, as pil_to_tensor gives
    torch.manual_seed(7)
    b = t(hwc.permute(2, 0, 1).contiguous())
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- ops against torchvision


def test_colour_ops_match_torchvision():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 10, 12, generator=g)
    x[0, :, :2] = 0.5  # grey pixels and ties between channels
    x[1, 0, 3], x[1, 1, 3] = 0.9, 0.9
    f = np.array([0.6, 1.4, 1.0, 0.8])
    shift = np.array([0.1, -0.1, 0.05, -0.5])
    for ours, ref, factors in (
        (A.adjust_brightness_, TF.adjust_brightness, f),
        (A.adjust_contrast, TF.adjust_contrast, f),
        (A.adjust_saturation, TF.adjust_saturation, f),
        (A.adjust_hue, TF.adjust_hue, shift),
    ):
        expected = torch.stack([ref(x[i], float(factors[i])) for i in range(4)])
        torch.testing.assert_close(ours(x.clone(), factors), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x[:1].clone(), factors[:1]), expected[:1], atol=1e-5,
                                   rtol=0)
    torch.testing.assert_close(A.to_grayscale3(x), TF.rgb_to_grayscale(x, 3))


@pytest.mark.parametrize("img_size", [32, 96, 224])
def test_blur_matches_torchvision_gaussian_blur(img_size):
    k = A.blur_kernel_size(img_size)
    assert k == 13  # 3 sigma of the widest blur, sigma 2, at every size
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 40, 40, generator=g)
    sigma = np.array([0.1, 1.0, 2.0])
    expected = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
                            for i in range(3)])
    # taps beyond 3 sigma are dropped: < 0.3/255 from torchvision's full kernel
    torch.testing.assert_close(A.gaussian_blur(x, sigma, k), expected, atol=0.3 / 255, rtol=0)
    torch.testing.assert_close(A.gaussian_blur(x[2:], sigma[2:], k), expected[2:],
                               atol=0.3 / 255, rtol=0)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_is_as_strong_as_the_official_pil_blur_at_32_px(sigma):
    """The official blur is PIL's GaussianBlur(radius=sigma) on the crop; ours at 32 px moves
    the pixels as much (within 10 %: PIL approximates small sigmas coarsely) and lands within
    1/255 of PIL's output on average."""
    data = build_dataset("synthetic", "train", img_size=32, num_train=16)
    images = torch.stack([data[i][0] for i in range(16)])
    x = images.float() / 255
    ours = A.gaussian_blur(x, np.full(16, sigma), A.blur_kernel_size(32))
    pil = torch.stack([
        torch.from_numpy(np.array(Image.fromarray(im.permute(1, 2, 0).numpy())
                                  .filter(ImageFilter.GaussianBlur(sigma)))).permute(2, 0, 1)
        for im in images]).float() / 255
    strength_ours, strength_pil = (ours - x).abs().mean(), (pil - x).abs().mean()
    assert abs(strength_ours / strength_pil - 1) < 0.1, (strength_ours, strength_pil)
    assert (ours - pil).abs().mean() < 1 / 255


def test_solarize_matches_pil_threshold():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    ours = A.solarize_(u.float() / 255)
    torch.testing.assert_close(ours, TF.solarize(u, 128).float() / 255)
    # values between uint8 steps are cut where rounding would put them
    near = torch.tensor([127.4, 127.6]).view(1, 1, 1, 2).expand(1, 3, 1, 2) / 255
    out = A.solarize_(near.clone()) * 255
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([127.4, 255 - 127.6]))


def test_crop_boxes_follow_torchvision_rule():
    torch.manual_seed(8)
    n, h, w = 3000, 427, 640
    boxes = A.sample_crop_boxes(np.full(n, h), np.full(n, w), (0.08, 1.0))
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    assert area.min() > 0.075 and area.max() <= 1.0
    aspect = bw / bh
    assert aspect.min() > 0.74 and aspect.max() < 1.35
    image = torch.zeros(3, h, w)
    tv = np.array([T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
                   for _ in range(n)])
    assert abs(area.mean() - (tv[:, 2] * tv[:, 3] / (h * w)).mean()) < 0.03
    # nothing fits a 10x100 strip at scale >= 0.9: torchvision's central fallback
    fallback = A.sample_crop_boxes(np.array([10]), np.array([100]), (0.9, 1.0))
    assert fallback.tolist() == [[0, 43, 10, 13]]


def test_crop_box_loop_and_vectorised_rule_agree():
    rng = np.random.default_rng(0)
    u = rng.random((3000, 22))
    u[:500, :10] = 0.999  # large areas: many images need several attempts or the fallback
    for h, w, scale in ((427, 640, (0.08, 1.0)), (10, 100, (0.5, 1.0)), (100, 10, (0.9, 1.0))):
        batch = A.crop_boxes_from_uniforms(np.full(3000, h), np.full(3000, w), scale,
                                           A.CROP_RATIO, u)
        one = np.concatenate([A.crop_boxes_from_uniforms(np.array([h]), np.array([w]), scale,
                                                         A.CROP_RATIO, u[i:i + 1])
                              for i in range(3000)])
        assert np.array_equal(batch, one)


def test_crop_resize_matches_v2_resized_crop():
    image = random_image(30, 40)
    boxes = np.array([[2, 3, 20, 25], [0, 0, 30, 40], [5, 5, 16, 16]])
    out = A.crop_resize(image.expand(3, 3, 30, 40), boxes, 16)
    for i, (t, lft, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(image, t, lft, h, w, [16, 16], antialias=True)
        torch.testing.assert_close(out[i], ref.float() / 255)
