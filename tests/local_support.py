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


QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] in ('image', 'image_url') %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat format (ChatML with vision markers), shortened."""


def write_qwen2_vl_dir(path: Path, init: float = 0.2, seed: int = 0, side: int = 56) -> Path:
    """A tiny random Qwen2-VL (2 text layers, 1 vision block) with a byte-level BPE tokenizer
    trained here, its processor and chat template, saved as a user's model folder is.

    `init`: the weights' initializer range; at transformers' default (0.02) the logits are
    nearly flat and LoRA cannot move label scores. `side`: images are resized to side x side
    pixels (56: 4 x 4 patches of 14, 4 image tokens).
    """
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = "Classify the following input image into one of the following categories: "
    tok.train_from_iterator([corpus + " ".join(LABELS) + " system user assistant"], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    torch.manual_seed(seed)
    config = transformers.Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "initializer_range": init,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
            },
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": init,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        initializer_range=init,
    )
    model = transformers.Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(
            min_pixels=side * side, max_pixels=side * side
        ),
        tokenizer=tokenizer,
        video_processor=transformers.Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path
