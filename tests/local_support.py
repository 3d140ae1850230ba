"""Tiny local models and learnable images, made here (random weights, nothing downloaded), for
the tests of the local arms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vlm_classify.dataset.manifest import LABELS_NAME, MANIFEST_NAME, ManifestRow, write_manifest

LABELS = ["Beagle", "Chihuahua", "Golden Retriever"]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230)]

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_open_clip_dir(path: Path, seed: int = 0) -> Path:
    """A tiny open_clip model saved as open_clip's `local-dir:` format reads it."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    path.mkdir(parents=True)
    save_file(model.state_dict(), path / "open_clip_model.safetensors")
    config = {
        "model_cfg": TINY_OPEN_CLIP,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (path / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def write_transformers_dir(path: Path) -> Path:
    """A tiny transformers CLIP (model, image processor, character-level BPE tokenizer)."""
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in "abcdefghijklmnopqrstuvwxyz.":
            vocab[ch + suffix] = len(vocab)
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(path, model_max_length=16)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    transformers.CLIPModel(config).save_pretrained(path)
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    transformers.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def colour_prepared(root: Path, per_split: dict[str, int], noise: float = 25.0) -> Path:
    """A prepared folder whose classes differ by colour (plus pixel noise): a probe can learn it,
    random zero-shot weights cannot."""
    rng = np.random.default_rng(0)
    rows: list[ManifestRow] = []
    for li, (label, colour) in enumerate(zip(LABELS, COLOURS, strict=True)):
        key = f"n{li:08d}"
        for split, count in per_split.items():
            for i in range(count):
                pixels = np.asarray(colour, np.float32) + rng.normal(0, noise, (40, 48, 3))
                rel = f"images/{key}/{split}_{i}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / rel, "JPEG")
                rows.append(
                    ManifestRow.for_image(
                        root, rel, id=f"{key}/{split}_{i}", split=split, label=label, synset=key
                    )
                )
    write_manifest(root / MANIFEST_NAME, rows)
    (root / LABELS_NAME).write_text("".join(f"{lb}\n" for lb in LABELS), encoding="utf-8")
    return root


def write_qwen2_vl_dir(path: Path, init: float = 0.2, seed: int = 0, side: int = 56) -> Path:
    """A tiny random Qwen2-VL (2 text layers, 1 vision block) with a byte-level BPE tokenizer
    trained here, its processor and chat template, saved as a user's model folder is.

    `init`: the weights' initializer range; at transformers' default (0.02) the logits are
    nearly flat and LoRA cannot move label scores. `side`: images are resized to side x side
    pixels (56: 4 x 4 patches of 14, 4 image tokens).
    """
    pytest.importorskip("transformers")
    from vlm_classify.backends.local.hf_random import write_random_qwen2_vl

    return write_random_qwen2_vl(path, LABELS, "tiny", init=init, side=side, seed=seed)
