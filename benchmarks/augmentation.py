"""Two-view augmentation speed per core: moco3.augment vs the official MoCo v3 PIL pipeline.

    python benchmarks/augmentation.py            # ~1 minute
    python benchmarks/augmentation.py --rounds 3 --seconds 0.5   # quicker, noisier

Two scales, both measured in this run on one thread (torch.set_num_threads(1)):
* photo: scikit-learn's two sample photos (427x640) to 224 px crops (crop_min 0.08);
* tiny:  32 px synthetic images (moco3's built-in dataset) to 32 px crops.

The official pipeline is main_moco.py's recipe on PIL images with torchvision.transforms
v1; it starts from decoded PIL images, ours from decoded uint8 tensors (channels-last
memory, as pil_to_tensor and moco3's in-memory datasets give). Ours runs per image
(TwoViewTransform.__call__, what a DataLoader worker does) and on batches (apply_batch).
Rates are per CPU-second of the benchmark's thread (time.thread_time), which a machine
shared with other jobs disturbs much less than wall time; measurements alternate between
the pipelines in rounds and report the median.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps

from moco3.augment import IMAGENET_MEAN, IMAGENET_STD, TwoViewTransform
from moco3.data import build_dataset
from moco3.precision import cpu_kind
from moco3.provenance import cpu_model


class PILGaussianBlur:
    """The official moco.loader.GaussianBlur: PIL blur with radius ~ U[0.1, 2]."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class PILSolarize:
    """The official moco.loader.Solarize: PIL's solarize at threshold 128."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img)


def official_views(img_size: int, crop_min: float = 0.08) -> Callable:
    """main_moco.py's augmentation1 / augmentation2 (torchvision v1 on PIL), as one callable."""

    def recipe(blur_p: float, solarize_p: float) -> T.Compose:
        ops = [
            T.RandomResizedCrop(img_size, scale=(crop_min, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PILGaussianBlur()], p=blur_p),
        ]
        if solarize_p > 0:
            ops.append(T.RandomApply([PILSolarize()], p=solarize_p))
        ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        return T.Compose(ops)

    view1, view2 = recipe(1.0, 0.0), recipe(0.1, 0.2)
    return lambda img: (view1(img), view2(img))


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Pairs per CPU-second of fn (which returns how many pairs it made), over ~seconds.

    CPU time of this thread, not wall time: on a machine shared with other jobs the wall
    clock also counts the time the scheduler gives to them.
    """
    fn()  # warm up
    done, start = 0, time.thread_time()
    while time.thread_time() - start < seconds:
        done += fn()
    return done / (time.thread_time() - start)


def compare(name: str, contenders: dict[str, Callable[[], int]], rounds: int,
            seconds: float) -> dict[str, float]:
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for key, fn in contenders.items():
            rates[key].append(rate(fn, seconds))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["official PIL"]
    print(f"\n{name}")
    for key, value in med.items():
        print(f"  {key:<28s} {value:9.1f} pairs/s/core   x{value / base:5.2f}")
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5, help="per contender per round")
    p.add_argument("--batch", type=int, default=256, help="apply_batch size at the tiny scale")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    print(f"{cpu_model()} ({cpu_kind()}); torch {torch.__version__}, 1 thread; "
          f"{args.rounds} rounds x {args.seconds} s")

    from sklearn.datasets import load_sample_images

    photos = [np.array(a) for a in load_sample_images().images]  # 427x640 RGB, writable
    pil = [Image.fromarray(a) for a in photos]
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in photos]  # CHW view of HWC memory
    contiguous = [t.contiguous() for t in tensors]
    official, ours = official_views(224), TwoViewTransform(224)
    counter = {"i": 0}

    def one(fn: Callable, items: list) -> Callable[[], int]:
        def run() -> int:
            counter["i"] += 1
            fn(items[counter["i"] % len(items)])
            return 1
        return run

    photo = compare("photo: 427x640 -> 224 px", {
        "official PIL": one(official, pil),
        "ours, per image": one(ours, tensors),
        "ours, per image, CHW input": one(ours, contiguous),
        "ours, apply_batch(32 list)": lambda: (ours.apply_batch(tensors * 16), 32)[1],
    }, args.rounds, args.seconds)

    ds = build_dataset("synthetic", "train", img_size=32, num_train=args.batch)
    tiny_t = [ds[i][0] for i in range(len(ds))]
    tiny_pil = [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in tiny_t]
    tiny_batch = ds.images[:args.batch]
    official32, ours32 = official_views(32), TwoViewTransform(32)
    tiny = compare("tiny: 32 px synthetic -> 32 px", {
        "official PIL": one(official32, tiny_pil),
        "ours, per image": one(ours32, tiny_t),
        f"ours, apply_batch({args.batch})": lambda: (ours32.apply_batch(tiny_batch),
                                                      args.batch)[1],
    }, args.rounds, args.seconds)

    best_photo = max(v for k, v in photo.items() if k.startswith("ours") and "CHW" not in k)
    best_tiny = max(v for k, v in tiny.items() if k.startswith("ours"))
    print(f"\nratio ours/official per core (target >= 3): photo "
          f"x{best_photo / photo['official PIL']:.2f} (per image "
          f"x{photo['ours, per image'] / photo['official PIL']:.2f}), tiny "
          f"x{best_tiny / tiny['official PIL']:.2f} (per image "
          f"x{tiny['ours, per image'] / tiny['official PIL']:.2f})")


if __name__ == "__main__":
    main()
