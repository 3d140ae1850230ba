"""Benchmark `cnn/` training on this machine: images/s, and whether the data loader keeps up.

    python benchmarks/bench_cnn.py [--arch mobilenetv3_small_100] [--images 320] [--workers 0 1 2]

On photo-like 500x375 JPEGs (Stanford Dogs' typical size, cached in --data), from random init
(offline, so nothing is downloaded), at the architecture's own input size (224 px here):

1. the training step alone (forward, backward, AdamW) on tensors already in memory: the ceiling;
2. the data loader alone (decode, timm's train augmentation, batching) with 0, 1, 2... workers;
3. the trainer end to end (`make_trainer(...).fit`, one epoch) with the same worker counts.

The loader is not the bottleneck when (2) is well above (1) and (3) comes close to (1).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import timm
import timm.data
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from bench_prepare import photo_like
from vlm_classify.backends.base import LocalSettings
from vlm_classify.backends.local import cnn, common
from vlm_classify.dataset.manifest import (
    LABELS_NAME,
    MANIFEST_NAME,
    ManifestRow,
    load_sample,
    write_manifest,
)
from vlm_classify.models import ModelRef
from vlm_classify.training import TrainOptions


def generate(root: Path, images: int, classes: int, val: int) -> Path:
    """A prepared dir (manifest, labels, JPEGs) of `images` train and `val` val images, once."""
    marker = root / f".complete-{images}-{classes}-{val}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rows: list[ManifestRow] = []
    labels = [f"class_{c:03d}" for c in range(classes)]
    for i in range(images + val):
        split = "train" if i < images else "val"
        label = labels[i % classes]
        rel = f"images/{label}/{split}_{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        photo_like(500, 375, i).save(root / rel, "JPEG", quality=90)
        rows.append(
            ManifestRow.for_image(
                root, rel, id=f"{label}/{split}_{i:05d}", split=split, label=label
            )
        )
    write_manifest(root / MANIFEST_NAME, rows)
    (root / LABELS_NAME).write_text("".join(f"{lb}\n" for lb in labels), encoding="utf-8")
    marker.write_text("ok\n")
    return root


def step_only(arch: str, classes: int, batch: int, steps: int, device: str = "cpu") -> float:
    """Training steps on one random batch already on the device: images/s."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=classes).train().to(device)
    size = timm.data.resolve_model_data_config(model)["input_size"]
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, *size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, kernels
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def loader_only(prepared: Path, arch: str, batch: int, workers: int) -> float:
    """One pass of the train loader (decode, augment, collate), nothing else: images/s."""
    sample = load_sample(prepared)
    model = timm.create_model(arch, pretrained=False, num_classes=len(sample.labels))
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=True)
    dataset = common.ImageDataset(prepared, sample.split("train"), transform, sample.labels)
    t = time.perf_counter()
    n = 0
    for images, _ in common.loader(
        dataset, batch, workers, torch.device("cpu"), shuffle=True, seed=0
    ):
        n += int(images.shape[0])
    return n / (time.perf_counter() - t)


def trainer(
    prepared: Path, arch: str, batch: int, workers: int, out: Path, device: str = "cpu"
) -> float:
    """The real trainer, one epoch from random init: its recorded training images/s."""
    sample = load_sample(prepared)
    shutil.rmtree(out, ignore_errors=True)
    options = TrainOptions(
        model=f"cnn/{arch}",
        name="bench",
        epochs=1,
        batch_size=batch,
        local=LocalSettings(device=device, offline=True, workers=workers),
    )
    fit = cnn.make_trainer(ModelRef("cnn", arch), sample.labels, prepared, options)
    result = fit.fit(sample.split("train"), sample.split("val"), out, lambda _e: None)
    assert result.details["pretrained"] is False
    return float(result.details["train_images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="mobilenetv3_small_100")
    parser.add_argument("--images", type=int, default=320, help="train images (one epoch)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="steps of the step-only timing")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, the cores)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "vlm-classify-bench-cnn"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ["HF_HUB_OFFLINE"] = "1"  # random init, as asked: never fetch weights
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    prepared = generate(args.data / "prepared", args.images, args.classes, val=args.batch_size)
    print(f"data: {args.images} train + {args.batch_size} val 500x375 JPEGs in {prepared}")
    print(f"  ready in {time.perf_counter() - t:.1f} s (cached for next time)")
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, timm {timm.__version__}; "
        f"load average {os.getloadavg()[0]:.2f} (others' work skews every figure)"
    )
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{args.arch}, random init, batch {args.batch_size}, {card}:")
    ceiling = step_only(args.arch, args.classes, args.batch_size, args.steps, args.device)
    print(f"  1. training step alone (tensors in memory): {ceiling:7.1f} images/s")
    for w in args.workers:
        rate = loader_only(prepared, args.arch, args.batch_size, w)
        print(
            f"  2. loader alone, {w} workers:                {rate:7.1f} images/s "
            f"({rate / ceiling:.1f}x the step)"
        )
    for w in args.workers:
        rate = trainer(prepared, args.arch, args.batch_size, w, args.data / f"out-{w}", args.device)
        print(
            f"  3. trainer end to end, {w} workers:          {rate:7.1f} images/s "
            f"({rate / ceiling:.0%} of the step alone)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
