"""Section data: the job's input pipeline in images/s per core, and whether the ViT-B step
would be input-bound on this machine."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_check.machinery import (
    sync,
    torch_threads,
)
from benchmarks.gpu_check.profiles import (
    NO_CUDA,
    TARGET_VIT_B_IMG_S,
    Context,
)
from benchmarks.gpu_check.report import Report
from moco3.augment import TwoViewTransform
from moco3.data import IndexedTransformDataset, build_dataset
from moco3.loader import StepBatchSampler, epoch_loader


def write_jpegs(root: Path, count: int, seed: int = 0, classes: int = 4) -> list[Path]:
    """`count` random-content JPEGs of ImageNet-like sizes in root/train/<class>/.

    Smooth random colour fields plus noise, at quality 90: files of ~100 KiB, about
    ImageNet's mean (~110 KB). Pure noise would make them 3x larger (and slower to decode)
    than photos of the same size, flat colour much smaller.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = ((500, 375), (375, 500), (500, 333), (500, 400), (500, 500), (333, 500))
    paths = []
    for i in range(count):
        w, h = sizes[int(rng.integers(len(sizes)))]
        coarse = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
        img += rng.normal(0.0, 20.0, img.shape).astype(np.float32)
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def thread_rate(run_once: Callable[[], int], seconds: float) -> float:
    """Items per CPU-second of this thread: run_once() (returning how many items it did)
    at least once and until `seconds` of thread time have passed. Thread time, not wall
    time: other jobs on a shared machine then hardly disturb it."""
    done, start = 0, time.thread_time()
    while True:
        done += run_once()
        spent = time.thread_time() - start
        if spent >= seconds:
            return done / spent


def section_data(ctx: Context, report: Report) -> None:
    """The input pipeline on JPEG files: per-core rate of decode + two views."""
    sec, device, p = "data", ctx.device, ctx.profile
    with tempfile.TemporaryDirectory(prefix="gpu-check-jpeg-") as tmp:
        root = Path(tmp)
        paths = write_jpegs(root, p.num_jpegs)
        sizes = [path.stat().st_size for path in paths]
        report.data.update(jpegs=len(paths), jpeg_mean_kib=round(sum(sizes) / len(sizes) / 1024))
        dataset = build_dataset("imagefolder", "train", root=str(root))
        images = IndexedTransformDataset(dataset, None)
        two_views = TwoViewTransform(224, crop_min=0.08)
        batch = min(32, len(dataset))
        steps = len(dataset) // batch

        def epoch(pin: bool = False) -> Any:
            sampler = StepBatchSampler(len(dataset), batch, 0, 0, 0, steps)
            return epoch_loader(images, two_views, sampler, 0, 0, num_workers=0,
                                pin_memory=pin)

        def decode_only() -> int:
            for i in range(len(dataset)):
                dataset[i]
            return len(dataset)

        def full_pipeline() -> int:
            return sum(len(index) for _, _, index in epoch())

        def per_image() -> int:
            for i in range(len(dataset)):  # a DataLoader worker's path without the collate
                torch.manual_seed(i)
                two_views(dataset[i][0])
            return len(dataset)

        with report.check(sec, "input pipeline rate"), torch_threads(1):
            decode_rate = thread_rate(decode_only, p.data_seconds / 2)
            rate = thread_rate(full_pipeline, p.data_seconds)
            single = thread_rate(per_image, p.data_seconds / 2)
            report.data.update(decode_img_s_per_core=decode_rate, pipeline_img_s_per_core=rate,
                               per_image_img_s_per_core=single)
            report.add(sec, "input pipeline rate", "info",
                       f"{rate:.0f} img/s per core (decode alone {decode_rate:.0f}; decode + "
                       f"views image by image {single:.0f})",
                       note=f"the job's loader (batched views, apply_batch), one thread, "
                            f"{len(paths)} JPEGs of ~{report.data['jpeg_mean_kib']} KiB")
        try:
            decode_jpeg_rate(paths, device, report)
        except Exception as err:  # noqa: BLE001 - optional, not the job's path: a note
            report.add(sec, "torchvision.io.decode_jpeg", "info",
                       f"failed: {type(err).__name__}: {err}"[:300])
        name = "pinned-memory loader -> GPU (non_blocking)"
        if device.type != "cuda":
            report.add(sec, name, NO_CUDA)
            return
        with report.check(sec, name):
            (v1, v2), _, index = next(iter(epoch(pin=True)))
            pinned = v1.is_pinned() and v2.is_pinned()
            on_gpu = v1.to(device, non_blocking=True)
            sync(device)
            same = torch.equal(on_gpu.cpu(), v1)
            report.add(sec, name, "pass" if pinned and same else "fail",
                       f"pinned {pinned}, copy equal {same}", "pinned and equal",
                       f"batch {len(index)} of 224 px views")


def decode_jpeg_rate(paths: list[Path], device: torch.device, report: Report) -> None:
    """torchvision.io.decode_jpeg: on the GPU (nvJPEG, one batched call) when there is one;
    on the CPU (libjpeg-turbo, one thread) always. Then the two views on the GPU."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    data = [read_file(str(p)) for p in paths]
    with torch_threads(1):
        cpu_rate = thread_rate(lambda: len(decode_jpeg(data, mode=ImageReadMode.RGB)), 0.3)
    report.data["tv_decode_cpu_img_s_per_core"] = cpu_rate
    measured = f"CPU {cpu_rate:.0f} img/s per core"
    if device.type == "cuda":
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # warm-up
        sync(device)
        start, rounds = time.perf_counter(), 0
        while time.perf_counter() - start < 1.0:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            rounds += 1
        sync(device)
        gpu_rate = rounds * len(data) / (time.perf_counter() - start)
        # The views on the GPU from the decoded images (the job augments on the CPU; this
        # says what moving it would give).
        report.data["gpu_decode_img_s"] = gpu_rate
        measured += f"; GPU {gpu_rate:.0f} img/s"
        try:
            two_views = TwoViewTransform(224, crop_min=0.08)
            two_views.apply_batch(decoded[:8])
            sync(device)
            start = time.perf_counter()
            two_views.apply_batch(decoded)
            sync(device)
            views_rate = len(decoded) / (time.perf_counter() - start)
            report.data["gpu_views_img_s"] = views_rate
            measured += f", + two views on GPU {views_rate:.0f} img/s"
        except Exception as err:  # noqa: BLE001 - not the job's path: a note, not a failure
            measured += f", two views on GPU failed ({type(err).__name__}: {err})"[:200]
    report.add("data", "torchvision.io.decode_jpeg", "info", measured,
               note="decode only (RGB); the job decodes with PIL")


def input_bound_verdict(ctx: Context, report: Report) -> None:
    """Would the ViT-B step wait for data with this machine's cores? One core per GPU is
    kept for the training process; loader workers assumed to scale linearly (optimistic)."""
    rate = report.data.get("pipeline_img_s_per_core")
    if not rate:
        return
    cores = len(os.sched_getaffinity(0))
    gpus = max(1, torch.cuda.device_count()) if ctx.device.type == "cuda" else 1
    workers = max(1, cores // gpus - 1)
    supply = rate * workers
    measured = [r.img_per_s for r in report.speed if r.model == "vit_base"
                and r.img_per_s and not r.variant.startswith("official")]
    if ctx.device.type == "cuda" and measured:
        need, source = max(measured), "the measured ViT-B/16 step"
    else:
        need, source = TARGET_VIT_B_IMG_S, "the ViT-B/16 target of 2,200 img/s per GPU"
    bound = supply < need
    cores_needed = math.ceil(need / rate) + 1
    # `workers` is also what a GPU run's data.num_workers defaults to (moco3/workers.py).
    verdict = (f"{'input-bound' if bound else 'not input-bound'}: {workers} loader core(s) "
               f"per GPU x {rate:.0f} img/s = {supply:.0f} img/s vs {need:.0f} img/s of "
               f"{source}; ~{cores_needed} cores per GPU needed")
    single = report.data.get("per_image_img_s_per_core")
    if single:
        verdict += f" (~{math.ceil(need / single) + 1} with views made image by image)"
    report.data.update(cores=cores, gpus=gpus, loader_cores_per_gpu=workers,
                       supply_img_s=supply, need_img_s=need, input_bound=bound,
                       cores_per_gpu_needed=cores_needed, verdict=verdict)
    report.add("data", "ViT-B step input-bound?", "info", verdict,
               note=f"{cores} cores (sched_getaffinity), {gpus} GPU(s)")
