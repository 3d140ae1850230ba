"""Random-weight Qwen2-VL models made here, for tests, benchmarks and trying the `hf/` arms
without a download: the real architecture at a chosen size, a byte-level BPE tokenizer trained
on the prompt's own words, Qwen's chat format and processor, saved as `save_pretrained` writes a
user's model folder and loaded back through the Auto classes like any other.

Their answers mean nothing; their speed is that of the architecture at that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from ...prompts import FULL_TEMPLATE

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] in ('image', 'image_url') %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat format (ChatML with vision markers), without its tool and video branches."""

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "mrope_section": [2, 1, 1]},
        "vision": {"depth": 1, "embed_dim": 32, "num_heads": 2},
        "vocab": 400,
    },
    "small": {
        "text": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
                 "num_attention_heads": 8, "num_key_value_heads": 2, "mrope_section": [8, 12, 12]},
        "vision": {"depth": 4, "embed_dim": 256, "num_heads": 4},
        "vocab": 4000,
    },
    "2b": {  # Qwen2-VL-2B-Instruct's published config
        "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                 "num_attention_heads": 12, "num_key_value_heads": 2, "mrope_section": [16, 24, 24]},
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16},
        "vocab": 4000,
        "model_vocab": 151936,
    },
}  # fmt: skip
"""`tiny`: for tests (seconds on a CPU); `small`: a few layers of real width, for CPU benchmarks;
`2b`: Qwen2-VL-2B's shape (2.2 B parameters), for GPU measurements."""


def write_random_qwen2_vl(
    path: Path,
    labels: Sequence[str],
    size: str = "tiny",
    init: float = 0.02,
    side: int = 56,
    seed: int = 0,
) -> Path:
    """A random Qwen2-VL of `size` in `path`, its tokenizer trained on the prompt listing
    `labels`. `init`: the weights' initializer range (a tiny model needs about 0.2 for its
    logits not to be flat); `side`: images are resized to about side x side pixels."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    shape = SIZES[size]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=shape["vocab"],
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = FULL_TEMPLATE.format(labels=", ".join(labels))
    tok.train_from_iterator([corpus, "system user assistant", *labels], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    ids: dict[str, int] = {t: cast(int, tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL}
    text = dict(shape["text"])
    mrope = text.pop("mrope_section")
    torch.manual_seed(seed)
    config = transformers.Qwen2VLConfig(
        text_config={
            **text,
            "vocab_size": shape.get("model_vocab", len(tokenizer)),
            "max_position_embeddings": 32768,
            "initializer_range": init,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        vision_config={
            **shape["vision"],
            "hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": init,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model: Any = transformers.Qwen2VLForConditionalGeneration(config)
    if size == "2b":  # 4.4 GB in bf16 rather than 8.8 GB in fp32 (it loads in bf16 on a GPU)
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(
            min_pixels=side * side, max_pixels=side * side
        ),
        tokenizer=tokenizer,
        video_processor=transformers.Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return Path(path)


__all__ = ["SIZES", "write_random_qwen2_vl"]
