"""Benchmark the `clip/` provider: zero-shot throughput batched against one image at a time, and a
linear probe trained again on cached embeddings against the first training.

    python benchmarks/bench_clip.py [--arch ViT-B-32] [--classes 10] [--test 8] [--train 8]
                                    [--val 2] [--batch 32] [--threads N] [--data DIR]

The model is a real open_clip architecture with random weights (`pretrained=None`: nothing is
downloaded), saved once in open_clip's folder format under DIR and used as `clip/DIR/...`, exactly
as a user's own model. Images are photo-like 512x384 JPEGs (prepare's default size) in a prepared
folder. Everything goes through the public functions (`classify`, `train_local`), each zero-shot
run and the first probe on an empty embedding cache; images/s are over the runner's busy time
(model loading excluded), the probe's times are its whole `train_local` wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from bench_prepare import photo_like
from vlm_classify.backends.base import LocalSettings
from vlm_classify.backends.local.templates import load_templates
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import LABELS_NAME, MANIFEST_NAME, ManifestRow, write_manifest
from vlm_classify.training import TrainOptions, train_local


def random_model(folder: Path, arch: str) -> Path:
    """`arch` with random weights in open_clip's local folder format (written once)."""
    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    config = {
        "model_cfg": open_clip.get_model_config(arch),
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def prepared_folder(root: Path, classes: int, per_split: dict[str, int]) -> Path:
    """A prepared folder of photo-like 512x384 JPEGs, written directly (as the tests do)."""
    shutil.rmtree(root, ignore_errors=True)
    rows: list[ManifestRow] = []
    labels = [f"breed {c:03d}" for c in range(classes)]
    seed = 0
    for c, label in enumerate(labels):
        for split, count in per_split.items():
            for i in range(count):
                seed += 1
                rel = f"images/c{c:03d}/{split}_{i}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                photo_like(512, 384, seed).save(root / rel, "JPEG", quality=90)
                rows.append(
                    ManifestRow.for_image(
                        root, rel, id=f"c{c:03d}/{split}_{i}", split=split, label=label
                    )
                )
    write_manifest(root / MANIFEST_NAME, rows)
    (root / LABELS_NAME).write_text("".join(f"{lb}\n" for lb in labels), encoding="utf-8")
    return root


def zero_shot(
    prepared: Path, model: str, name: str, batch: int, device: str = "cpu"
) -> dict[str, object]:
    """One zero-shot arm on an empty embedding cache: the runner's images/s."""
    shutil.rmtree(prepared / "cache", ignore_errors=True)
    local = LocalSettings(device=device, batch_size=batch)  # type: ignore[arg-type]
    result = classify(prepared, ClassifyOptions(model=model, name=name, local=local))
    compute = json.loads((result.arm_dir / "arm.json").read_text(encoding="utf-8"))["compute"]
    return {
        "images": compute["images"],
        "busy_s": compute["busy_s"],
        "ips": compute["images_per_s"],
    }


def encoder_only(model_dir: Path, batch: int, repeats: int) -> tuple[float, float]:
    """The image encoder alone on random pixels: images/s batched and one at a time."""
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    x = torch.randn(batch, 3, *size)
    with torch.inference_mode():
        model.encode_image(x[:2])  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            model.encode_image(x)
        batched = repeats * batch / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(repeats):
            for i in range(batch):
                model.encode_image(x[i : i + 1])
        single = repeats * batch / (time.perf_counter() - t)
    return batched, single


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-32", help="an open_clip architecture")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--test", type=int, default=8, help="test images per class")
    parser.add_argument("--train", type=int, default=8, help="train images per class")
    parser.add_argument("--val", type=int, default=2, help="val images per class")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "vlm-classify-bench-clip"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = random_model(args.data / f"{args.arch}-random", args.arch)
    model = f"clip/{model_dir}"
    splits = {"train": args.train, "val": args.val, "test": args.test}
    prepared = prepared_folder(args.data / "prepared", args.classes, splits)

    batched = zero_shot(prepared, model, "zs-batched", args.batch, args.device)
    single = zero_shot(prepared, model, "zs-single", 1, args.device)
    enc_batched, enc_single = encoder_only(model_dir, args.batch, 2)

    shutil.rmtree(prepared / "cache", ignore_errors=True)
    first = train_local(prepared, TrainOptions(model=model, name="probe-1"))
    second = train_local(prepared, TrainOptions(model=model, name="probe-2"))

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {sys.version.split()[0]}"
    )
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU, fp32"
    print(f"model: open_clip {args.arch}, random weights, on {where}")
    print(
        f"zero-shot, {batched['images']} test images ({args.classes} labels x "
        f"{len(load_templates())} templates), "
        "empty embedding cache, through classify():"
    )
    print(f"  batches of {args.batch}: {batched['ips']} images/s ({batched['busy_s']} s busy)")
    print(f"  one image at a time: {single['ips']} images/s ({single['busy_s']} s busy)")
    ratio = float(batched["ips"]) / float(single["ips"])
    print(f"  batched / per image: {ratio:.2f}x (goal >= 2x)")
    print(
        f"  the image encoder alone: {enc_batched:.1f} images/s batched, {enc_single:.1f} one "
        f"at a time ({enc_batched / enc_single:.2f}x)"
    )
    print(
        f"linear probe on {args.classes * args.train} train + {args.classes * args.val} val images "
        f"({len(first['curves'])} values of C), train_local wall time:"
    )
    print(f"  first (embeddings computed: {first['details']['embeddings']}): {first['wall_s']} s")
    print(f"  second (embeddings cached: {second['details']['embeddings']}): {second['wall_s']} s")
    print(f"  first / second: {first['wall_s'] / second['wall_s']:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
