"""Datasets: every item is (image uint8 (3,H,W), label int).

    synthetic    built in: procedural shapes (moco3/synthetic.py), nothing on disk
    textures     built in: procedural textures (moco3/textures.py), the CPU scales' data
    digits       scikit-learn's 8x8 digits, upsampled to img_size, 3 channels
    cifar10/100  torchvision, from root (downloaded only when download=True)
    stl10        torchvision, from root; split "train+unlabeled" (labels -1 for the unlabeled
                 images) is the usual pre-training set, "train" and "val" (= test) are labelled
    imagefolder  ImageNet-1k layout: root/train/<class>/<image> and root/val/<class>/<image>,
                 decoded with PIL on access
    imagenet100  imagefolder restricted to the 100 classes of moco3/imagenet100.txt (CMC's list)

Images are CHW views of channels-last (HWC) memory (all but STL-10, stored CHW): torch's
uint8 antialiased resize, the costly step of the augmentation, runs several times faster on
such images than on contiguous CHW ones.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from moco3.config import DATASETS, GENERATED_DATASETS
from moco3.synthetic import SHAPES, generate_shapes
from moco3.textures import TEXTURES, generate_textures

SPLITS = ("train", "val")
IMAGENET100_CLASSES_FILE = Path(__file__).with_name("imagenet100.txt")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DIGITS_VAL_FRACTION = 0.2


class DatasetNotFoundError(ValueError):
    """A dataset's files are not where the configuration says; the message says how to get them."""


class ImageTensorDataset(Dataset):
    """Images held in memory: images uint8 (N,3,H,W) (any strides), labels long (N,)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N,3,H,W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class ImageFileDataset(Dataset):
    """Images decoded from files on access: samples is a list of (path, label)."""

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str]) -> None:
        self.samples = samples
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        path, label = self.samples[index]
        with Image.open(path) as img:
            # convert("RGB") also handles ImageNet's few greyscale and CMYK JPEGs;
            # pil_to_tensor gives a CHW view of HWC memory (the fast layout for crops)
            return pil_to_tensor(img.convert("RGB")), label


class IndexedTransformDataset(Dataset):
    """Wraps (image, label) items as (transform(image), label, index); index for memory banks."""

    def __init__(self, dataset: Dataset, transform: Callable[[Tensor], Any] | None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image, label = self.dataset[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index

    def __getattr__(self, name: str) -> Any:
        # num_classes, classes, labels of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class BatchTransformCollate:
    """DataLoader collate_fn applying a transform's apply_batch to the whole batch.

    Use with IndexedTransformDataset(ds, None): the worker stacks the uint8 images (a list
    when their sizes differ) and augments them in one call, -> (transformed, labels (B,),
    indices (B,)). For small images (tiny scale) this is several times faster than
    augmenting image by image in __getitem__. With seed_of, image i's views are drawn from
    its own generator seeded seed_of(i): the same views as torch.manual_seed(seed_of(i))
    followed by the per-image transform, whatever the batch.
    """

    def __init__(self, transform: Any, seed_of: Callable[[int], int] | None = None) -> None:
        self.transform = transform
        self.seed_of = seed_of  # index -> seed of that image's draws (apply_batch's seeds)

    def __call__(self, items: Sequence[tuple[Tensor, int, int]]) -> tuple[Any, Tensor, Tensor]:
        images = [item[0] for item in items]
        same_size = all(im.shape == images[0].shape for im in images)
        batch = torch.stack(images) if same_size else images
        labels = torch.tensor([item[1] for item in items], dtype=torch.long)
        indices = torch.tensor([item[2] for item in items], dtype=torch.long)
        if self.seed_of is None:
            return self.transform.apply_batch(batch), labels, indices
        seeds = [self.seed_of(int(i)) for i in indices]
        return self.transform.apply_batch(batch, seeds=seeds), labels, indices


def _from_hwc(images: np.ndarray) -> Tensor:
    """uint8 numpy (N,H,W,3) -> tensor (N,3,H,W) sharing its channels-last memory."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


@lru_cache(maxsize=8)  # shared by every dataset built with these arguments: never write to it
def _generated_tensors(name: str, split: str, img_size: int, num: int, seed: int
                       ) -> tuple[Tensor, Tensor]:
    generate = generate_textures if name == "textures" else generate_shapes
    images, labels = generate(num, img_size, seed, split)
    return _from_hwc(images), torch.from_numpy(labels)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: pixels (1797, 64) in 0..16 and targets (1797,).

    Read from scikit-learn's data file directly when it is there: importing sklearn.datasets
    for load_digits takes seconds.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            data = np.loadtxt(csv, delimiter=",")
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target.astype(np.int64)


@lru_cache(maxsize=4)
def _digits_tensors(img_size: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """All 1797 digits as uint8 (N,3,S,S) (channels-last memory), labels, and is_val mask."""
    pixels, target = _load_digits()
    gray = torch.from_numpy(pixels).float().view(-1, 1, 8, 8) / 16.0  # values 0..16
    # bilinear upsampling keeps the strokes smooth; antialias only matters when shrinking
    up = F.interpolate(gray, size=(img_size, img_size), mode="bilinear", align_corners=False,
                       antialias=img_size < 8)
    images = (up.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(target).long()
    # stratified split: the same fraction of each class in val, fixed by seed
    rng = np.random.default_rng([int(seed), 1797])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = np.flatnonzero(target == c)
        chosen = rng.choice(idx, size=int(round(DIGITS_VAL_FRACTION * len(idx))), replace=False)
        is_val[torch.from_numpy(chosen)] = True
    return images, labels, is_val


def _need_root(name: str, root: str | None, how: str) -> Path:
    if root is None or str(root) == "":
        raise DatasetNotFoundError(f"dataset '{name}' needs a root folder: set data.root=PATH, "
                                   f"{how}")
    return Path(os.path.expanduser(str(root)))


def _torchvision_arrays(name: str, split: str, root: str | None, download: bool):
    """Load CIFAR-10/100 or STL-10 through torchvision; a clear error when files are missing."""
    import torchvision.datasets as tvd

    spec = {
        "cifar10": (tvd.CIFAR10, "cifar-10-batches-py", "the CIFAR-10 python batches"),
        "cifar100": (tvd.CIFAR100, "cifar-100-python", "the CIFAR-100 python files"),
        "stl10": (tvd.STL10, "stl10_binary", "the STL-10 binary files"),
    }[name]
    cls, folder, what = spec
    how = f"pass data.download=true or put {what} ({folder}/) under it"
    path = _need_root(name, root, how)
    missing = DatasetNotFoundError(f"{name} not found at {path / folder}: pass data.download=true "
                                   f"or put {what} ({folder}/) under {path}")
    if not download and not (path / folder).is_dir():
        raise missing
    try:
        if name == "stl10":
            tv_split = {"train": "train", "val": "test"}.get(split, split)
            return cls(str(path), split=tv_split, download=download)
        return cls(str(path), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        if download:
            raise
        raise missing from err


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class folder names, one per line; blank lines and '#' comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def _image_folder(name: str, split: str, root: str | None,
                  class_list: str | None) -> ImageFileDataset:
    """root/<split>/<class>/<image>; classes sorted by folder name, optionally restricted."""
    how = ("put the ImageNet train/ and val/ folders (one subfolder per class, e.g. made by "
           "the usual extract scripts) under it")
    base = _need_root(name, root, how)
    folder = base / split
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{name} split folder {folder} not found: put the train/ and "
                                   f"val/ folders (one subfolder of images per class) under {base}")
    present = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    if class_list is not None:
        wanted = read_class_list(class_list)
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} of the {len(wanted)} classes listed in {class_list} have no "
                f"folder under {folder} (first: {missing[0]}): check the class list and the "
                f"dataset root")
        classes = sorted(set(wanted))
    else:
        classes = present
    if not classes:
        raise DatasetNotFoundError(f"{name}: no class folders under {folder}: put one subfolder "
                                   f"of images per class there")
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        found = len(samples)
        for dirpath, _, files in sorted(os.walk(folder / cls, followlinks=True)):
            samples += [(os.path.join(dirpath, f), label) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
        if len(samples) == found:
            raise DatasetNotFoundError(
                f"{name}: the class folder {folder / cls} holds no images (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)}): remove it or add its images")
    return ImageFileDataset(samples, classes)


def eval_crop_fraction(name: str, requested: float | None = None) -> float:
    """The share of the (resized) image that evaluation keeps: `requested`, or the dataset's
    protocol - 0.875 for photo folders (the official Resize(256) + CenterCrop(224)), 1.0
    (the whole image) for datasets stored at their training size (synthetic, digits, CIFAR,
    STL-10), where a centre crop would only cut off part of every image."""
    if requested is not None:
        return float(requested)
    return 0.875 if name in ("imagefolder", "imagenet100") else 1.0


def build_dataset(name: str = "synthetic", split: str = "train", root: str | None = None,
                  img_size: int = 32, num_train: int = 10000, num_val: int = 2000, seed: int = 0,
                  download: bool = False, class_list: str | None = None) -> Dataset:
    """A dataset of (uint8 (3,H,W), int label) with attributes num_classes, classes, labels.

    img_size: the image size of the generated datasets (synthetic, digits); files on disk keep
      their own size (the transforms resize). num_train/num_val: sizes of the synthetic
      splits. seed: generation seed of the synthetic images and of the digits split (keep it
      fixed across runs to compare runs on the same data). class_list: a file of class folder
      names restricting imagefolder (imagenet100 defaults to moco3/imagenet100.txt).
    """
    valid_splits = SPLITS + (("train+unlabeled",) if name == "stl10" else ())
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if split not in valid_splits:
        raise ValueError(f"unknown split {split!r} for {name}; valid: {', '.join(valid_splits)}")
    if name in GENERATED_DATASETS:
        images, labels = _generated_tensors(name, split, img_size, num_train if split == "train"
                                            else num_val, seed)
        return ImageTensorDataset(images, labels, SHAPES if name == "synthetic" else TEXTURES)
    if name == "digits":
        images, labels, is_val = _digits_tensors(img_size, seed)
        keep = is_val if split == "val" else ~is_val
        return ImageTensorDataset(images[keep], labels[keep], [str(d) for d in range(10)])
    if name in ("cifar10", "cifar100", "stl10"):
        ds = _torchvision_arrays(name, split, root, download)
        if name == "stl10":  # stored (N,3,96,96): keep it, a copy of the unlabeled part is 2.7 GB
            images = torch.from_numpy(ds.data)
            labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
        else:  # torchvision keeps an HWC view of CHW memory; make it HWC for the fast resize
            images = _from_hwc(np.ascontiguousarray(ds.data))
            labels = torch.tensor(ds.targets, dtype=torch.long)
        return ImageTensorDataset(images, labels, ds.classes)
    if name == "imagenet100" and class_list is None:
        class_list = str(IMAGENET100_CLASSES_FILE)
    return _image_folder(name, split, root, class_list)
