"""How hard is the built-in synthetic dataset? Raw-pixel kNN vs a small supervised CNN.

The gap between the two is the headroom a self-supervised representation can show on the
tiny scale: raw pixels are dominated by the nuisance factors (colour, position), a network
that learns the shape is not.

    python benchmarks/synthetic_data.py --threads 1    # 10k / 2k at 32 px, ~2 min
    python benchmarks/synthetic_data.py --cnn-epochs 0 # kNN only

kNN: cosine similarity on ImageNet-normalised, flattened pixels, k nearest training images
vote with weight exp(sim / T) (the weighted kNN of InstDisc/DINO, T = 0.07); the plain
majority vote is printed too.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moco3.augment import IMAGENET_MEAN, IMAGENET_STD
from moco3.data import build_dataset
from moco3.knn import pixel_features, weighted_knn_top1


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks (32-64-128-256 channels, stride 2 from the second) + linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [3, 32, 64, 128, 256]
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1,
                                 bias=False), nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def train_cnn(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, epochs: int,
              batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> tuple[float, float]:
    """Train SmallCNN (AdamW, cosine lr, flip augmentation); -> (val top-1 %, seconds)."""
    torch.manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def prep(x: Tensor) -> Tensor:
        return (x.float() / 255 - mean) / std

    model = SmallCNN(int(train_y.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (len(train_x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(train_x)).split(batch_size)[:len(train_x) // batch_size]:
            x = prep(train_x[idx])
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(prep(x)).argmax(1) for x in val_x.split(512)])
    return 100.0 * float((pred == val_y).float().mean()), seconds


def stack(ds) -> tuple[Tensor, Tensor]:
    """All items of a dataset of (uint8 (3,H,W), label) as (N,3,H,W) uint8 and (N,) long."""
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(
        [ds[i][1] for i in range(len(ds))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-train", type=int, default=10000)
    p.add_argument("--num-val", type=int, default=2000)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--cnn-epochs", type=int, default=5, help="0: kNN only")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train = build_dataset("synthetic", "train", img_size=args.img_size, num_train=args.num_train,
                          seed=args.seed)
    val = build_dataset("synthetic", "val", img_size=args.img_size, num_val=args.num_val,
                        seed=args.seed)
    gen_s = time.perf_counter() - t0
    train_x, train_y = stack(train)
    val_x, val_y = stack(val)
    print(f"synthetic: {len(train)} train / {len(val)} val at {args.img_size} px, "
          f"{train.num_classes} classes, generated in {gen_s:.2f} s")

    tf, vf = pixel_features(train_x), pixel_features(val_x)
    weighted = weighted_knn_top1(tf, train_y, vf, val_y, train.num_classes, k=args.k)
    majority = weighted_knn_top1(tf, train_y, vf, val_y, train.num_classes, k=args.k,
                                 t=None)
    print(f"raw-pixel kNN (k={args.k}, cosine): weighted {weighted:.1f} %, "
          f"majority {majority:.1f} %  (chance {100 / train.num_classes:.1f} %)")
    if args.cnn_epochs > 0:
        acc, seconds = train_cnn(train_x, train_y, val_x, val_y, args.cnn_epochs, seed=args.seed)
        print(f"supervised SmallCNN, {args.cnn_epochs} epochs ({seconds:.0f} s on CPU, "
              f"{torch.get_num_threads()} threads): val top-1 {acc:.1f} %")

if __name__ == "__main__":
    main()
