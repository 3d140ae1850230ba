"""Benchmark `vlm-classify prepare`: speed and memory on a Stanford-Dogs-sized sample, and phone photos.

    python benchmarks/bench_prepare.py [--images 6000] [--classes 120] [--data DIR]

Generates photo-like 500x375 JPEGs (smooth gradients plus noise) in class folders once (cached
in DIR), times `prepare` in a fresh process (so its peak RSS is its own), then checks that a
4000x3000 phone-style JPEG shrinks to under 1/20 of its bytes at --max-side 512.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_classify.dataset.manifest import read_manifest
from vlm_classify.dataset.prepare import PrepareOptions, prepare


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients, a few soft blobs and sensor-like noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x /= width
    y /= height
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-120, 120, 3)
        img[..., c] = 128 + a * x + b * y + d * x * y
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-90, 90, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _write_class(args: tuple[Path, int, int]) -> None:
    folder, class_index, count = args
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{folder.name.split('-')[0]}_{i:04d}.jpg"
        if not path.exists():
            photo_like(500, 375, class_index * 100_000 + i).save(path, "JPEG", quality=90)


def generate(root: Path, images: int, classes: int) -> Path:
    """Write (once) `images` JPEGs spread evenly over `classes` Stanford-style folders."""
    marker = root / f".complete-{images}-{classes}"
    if marker.exists():
        return root / "Images"
    per = images // classes
    jobs = [
        (root / "Images" / f"n{90000000 + c:08d}-breed_{c:03d}", c, per) for c in range(classes)
    ]
    print(
        f"generating {per * classes} photo-like 500x375 JPEGs in {root} (cached for next time)..."
    )
    t = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_class, jobs))
    marker.write_text("ok\n")
    print(f"  generated in {time.perf_counter() - t:.1f} s")
    return root / "Images"


def measure(
    src: Path, out: Path, per_class: int, workers: int | None, max_side: int
) -> dict[str, object]:
    """Run prepare once (in this process) and return wall time, rate and peak RSS."""
    held = max(1, round(per_class * 0.1))
    options = PrepareOptions(
        split=(per_class - 2 * held, held, held), workers=workers, max_side=max_side
    )
    t = time.perf_counter()
    result = prepare(src, out, options)
    wall = time.perf_counter() - t
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    images = sum(result.counts.values())
    return {
        "images": images,
        "wall_s": round(wall, 2),
        "images_per_s": round(images / wall, 1),
        "timings": result.timings,
        "copied": result.copied,
        "peak_rss_self_mb": round(self_kb / 1024, 1),
        "peak_rss_largest_worker_mb": round(child_kb / 1024, 1),
        "peak_rss_total_mb": round(
            (self_kb + child_kb * (options.workers or os.cpu_count() or 1)) / 1024, 1
        ),
    }


def phone_photo(tmp: Path) -> dict[str, object]:
    """A 4000x3000 quality-95 JPEG in, a --max-side 512 JPEG out: the byte ratio."""
    src = tmp / "phone" / "dogs"
    src.mkdir(parents=True, exist_ok=True)
    photo = src / "IMG_0001.jpg"
    photo_like(4000, 3000, 7).save(photo, "JPEG", quality=95)
    (tmp / "phone" / "cats").mkdir(exist_ok=True)
    photo_like(64, 48, 8).save(tmp / "phone" / "cats" / "c.jpg", "JPEG", quality=90)
    out = tmp / "phone-out"
    t = time.perf_counter()
    result = prepare(src.parent, out, PrepareOptions(split=(1, 0, 0), max_side=512, workers=1))
    seconds = time.perf_counter() - t
    (row,) = [r for r in read_manifest(out) if r.source_path.startswith("dogs/")]
    before, after = photo.stat().st_size, row.bytes
    return {
        "source_bytes": before,
        "prepared_bytes": after,
        "prepared_size": f"{row.width}x{row.height}",
        "ratio": round(after / before, 4),
        "under_1_20": after * 20 < before,
        "seconds": round(seconds, 2),
        "copied": result.copied,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "vlm-classify-bench"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--reencode-side",
        type=int,
        default=256,
        help="--max-side of the second run, which re-encodes every image",
    )
    parser.add_argument(
        "--measure",
        nargs=4,
        metavar=("SRC", "OUT", "PER_CLASS", "MAX_SIDE"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()

    if args.measure:  # the child process: one prepare run, result as JSON on stdout
        src, out, per, side = args.measure
        print(json.dumps(measure(Path(src), Path(out), int(per), args.workers, int(side))))
        return

    src = generate(args.data / f"src-{args.images}-{args.classes}", args.images, args.classes)
    per_class = args.images // args.classes

    def child(out: Path, max_side: int, fresh: bool = True) -> dict[str, object]:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            str(src),
            str(out),
            str(per_class),
            str(max_side),
        ]
        cmd += ["--workers", str(args.workers)] if args.workers else []
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    run = child(args.data / "out", 512)
    rerun = child(args.data / "out", 512, fresh=False)
    reencode = child(args.data / "out-reencode", args.reencode_side)
    with tempfile.TemporaryDirectory() as tmp:
        phone = phone_photo(Path(tmp))

    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"prepare {run['images']} images ({args.classes} classes x {per_class}), fresh output:")
    print(f"  wall {run['wall_s']} s, {run['images_per_s']} images/s, stages {run['timings']}")
    print(
        f"  peak RSS: main {run['peak_rss_self_mb']} MB, largest worker {run['peak_rss_largest_worker_mb']} MB, "
        f"all processes <= {run['peak_rss_total_mb']} MB"
    )
    print(f"  copied byte for byte: {run['copied']} of {run['images']}")
    print(
        f"rerun on the same output (nothing to write): wall {rerun['wall_s']} s, {rerun['images_per_s']} images/s"
    )
    print(
        f"--max-side {args.reencode_side} (every image resized and re-encoded): wall {reencode['wall_s']} s, "
        f"{reencode['images_per_s']} images/s, peak RSS all processes <= {reencode['peak_rss_total_mb']} MB"
    )
    print(
        f"phone photo 4000x3000 q95: {phone['source_bytes']:,} B -> {phone['prepared_size']} {phone['prepared_bytes']:,} B "
        f"(ratio {phone['ratio']}, under 1/20: {phone['under_1_20']}, {phone['seconds']} s)"
    )
    print(
        "image tokens at detail=low: 85 before and after (low detail is a fixed 85 tokens whatever the size)"
    )
    target_ok = run["wall_s"] <= 60 * args.images / 6000
    print(f"target 6,000 images in <= 60 s: {'met' if target_ok else 'MISSED'}")


if __name__ == "__main__":
    main()
