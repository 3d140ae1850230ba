"""Benchmark the `hf/` provider: label scoring from the prefix's key/value cache against one full
forward per label, and label scoring against free generation, per image.

    python benchmarks/bench_hf.py [--size small] [--labels 120] [--images 4] [--side 224]
                                  [--label-batch 128] [--threads N] [--device cpu|cuda]
                                  [--data DIR] [--train-steps 0]

The model is Qwen2-VL's architecture at `--size` (`small`: 8 text layers of width 512 and a
4-block vision tower; `2b`: Qwen2-VL-2B's shape) with random weights, written once by
`hf_random.write_random_qwen2_vl` and loaded through the Auto classes as `hf/DIR`, exactly as a
user's model. The labels are the 120 Stanford Dogs breeds as the original study wrote them, in
its full prompt (which lists them all). Images are photo-like 512x384 JPEGs resized by the
processor to about `--side` squared pixels.

Per image: the cached scorer (one prefix pass, then the labels `--label-batch` per pass), the
same scores from one full forward per label (the reference, checked equal), and free generation
of up to 20 tokens (batch 1 and batch 8, through `classify --answer text`). `--train-steps N`
also times N LoRA training steps (batch 4) through `finetune`'s loop (the epoch's time less its val scoring).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import torch

from bench_prepare import photo_like
from vlm_classify.backends.base import LocalSettings
from vlm_classify.backends.local import hf_vlm
from vlm_classify.backends.local.hf_model import LabelScorer
from vlm_classify.backends.local.hf_random import write_random_qwen2_vl
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import LABELS_NAME, MANIFEST_NAME, ManifestRow, write_manifest
from vlm_classify.models import ModelRef
from vlm_classify.training import TrainOptions, train_local


def study_labels(n: int) -> list[str]:
    """The study's 120 breed names (from the latency data shipped with the package)."""
    with (files("vlm_classify") / "data" / "seed-study-latencies.csv").open(encoding="utf-8") as f:
        breeds = sorted({row["breed"] for row in csv.DictReader(f)})
    return breeds[:n]


def prepared_folder(root: Path, labels: list[str], per_split: dict[str, int]) -> Path:
    """Photo-like 512x384 JPEGs, `per_split` of them for each of the first labels (the rest of
    the labels have no images: they are only scored)."""
    shutil.rmtree(root, ignore_errors=True)
    rows: list[ManifestRow] = []
    seed = 0
    for c, label in enumerate(labels):
        for split, count in per_split.items():
            for i in range(count if c < 4 else 0):
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="small", choices=["tiny", "small", "2b"])
    parser.add_argument("--labels", type=int, default=120)
    parser.add_argument("--images", type=int, default=4, help="images timed per method")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--label-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "vlm-classify-bench-hf"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    labels = study_labels(args.labels)
    model_dir = args.data / f"qwen2-vl-{args.size}-{args.side}"
    if not (model_dir / "config.json").is_file():
        write_random_qwen2_vl(model_dir, labels, args.size, side=args.side)
    per_image = max(1, args.images // 4)
    train_per_class = max(4, args.train_steps)  # 4 classes x this = steps x batch 4
    prepared = prepared_folder(
        args.data / "prepared", labels, {"train": train_per_class, "val": 1, "test": per_image}
    )
    settings = LocalSettings(device=args.device, label_batch=args.label_batch)  # type: ignore[arg-type]
    backend = hf_vlm.make_backend(ModelRef("hf", str(model_dir)), labels, prepared, settings)
    loaded = backend._loaded
    assert loaded is not None
    scorer = LabelScorer(loaded, backend._chat, args.label_batch)
    device = str(loaded.device)
    params = sum(p.numel() for p in loaded.model.parameters())
    from PIL import Image

    images = [Image.open(prepared / r.image_path).convert("RGB") for r in _test_rows(prepared)]
    images = (images * args.images)[: args.images]
    scorer.score(images[0])  # warm-up
    sync(device)
    t = time.perf_counter()
    cached = [scorer.score(im)[0] for im in images]
    sync(device)
    cached_s = (time.perf_counter() - t) / len(images)
    prefix_tokens = scorer.prompt_tokens
    full_images = images[: max(1, min(2, len(images)))]
    t = time.perf_counter()
    full = [scorer.score_full(im) for im in full_images]
    sync(device)
    full_s = (time.perf_counter() - t) / len(full_images)
    diff = max(float((a - b).abs().max()) for a, b in zip(cached, full, strict=False))
    backend.close()

    gen: dict[int, float] = {}
    for batch in (1, 8):
        local = LocalSettings(device=args.device, batch_size=batch, answer="text")  # type: ignore[arg-type]
        opts = ClassifyOptions(
            model=f"hf/{model_dir}", name=f"gen-{batch}", local=local, reset=True
        )
        result = classify(prepared, opts)
        compute = json.loads((result.arm_dir / "arm.json").read_text(encoding="utf-8"))["compute"]
        gen[batch] = 1 / compute["images_per_s"]

    train_s = None
    if args.train_steps:
        local = LocalSettings(device=args.device)  # type: ignore[arg-type]
        shutil.rmtree(prepared / "arms" / "lora", ignore_errors=True)
        opts_t = TrainOptions(
            model=f"hf/{model_dir}", name="lora", epochs=1, batch_size=4, local=local
        )
        record = train_local(prepared, opts_t)
        steps = -(-record["trained_images"] // 4)
        # the epoch's time less its val scoring (val images x the cached scorer's time)
        epoch_s = record["curves"][0]["seconds"] - record["val_images"] * cached_s
        train_s = epoch_s / steps

    out = {
        "size": args.size,
        "parameters": params,
        "device": device,
        "card": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "labels": len(labels),
        "prefix_tokens": prefix_tokens,
        "label_batch": args.label_batch,
        "cached_s_per_image": round(cached_s, 4),
        "full_s_per_image": round(full_s, 4),
        "speedup": round(full_s / cached_s, 2),
        "max_abs_logprob_diff": diff,
        "generate_s_per_image_batch1": round(gen[1], 4),
        "generate_s_per_image_batch8": round(gen[8], 4),
        "threads": torch.get_num_threads(),
        "lora_train_s_per_step": None if train_s is None else round(train_s, 4),
    }
    print(json.dumps(out, indent=2))
    print(
        f"\n{len(labels)} labels, prefix {prefix_tokens} tokens, {params / 1e6:.1f} M parameters "
        f"on {device}:\n"
        f"  label scoring, cached prefix: {cached_s:.3f} s/image ({1 / cached_s:.2f} images/s)\n"
        f"  one full forward per label:   {full_s:.3f} s/image  -> {full_s / cached_s:.1f}x slower"
        f" (max |difference| {diff:.2e})\n"
        f"  free generation, batch 1:     {gen[1]:.3f} s/image\n"
        f"  free generation, batch 8:     {gen[8]:.3f} s/image"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")


def _test_rows(prepared: Path) -> list[ManifestRow]:
    from vlm_classify.dataset.manifest import load_split

    return load_split(prepared, "test")[0]


if __name__ == "__main__":
    main()
