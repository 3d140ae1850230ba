"""Offline token counting: the o200k_base encoding, chat overheads, image tokens."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlm_classify.backends.openai import tokens
from vlm_classify.backends.openai.tokens import count_chat_tokens, count_text, image_tokens
from vlm_classify.image_rules import GPT4O_VISION, TileRule

SAMPLES = [
    "hello world",
    "Classify the following input image into one of the following categories: [Beagle, Chihuahua].",
    "Black-And-Tan Coonhound",
    '{"label":"Shih-Tzu"}',
    "Ça coûte 27,5 $ par million de jetons — 日本語のテキストも。",
    "   spaces\n\nand\ttabs  ",
    "<|endoftext|> is plain text here",
]

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    socket.socket.connect = refuse
    socket.create_connection = refuse

    from vlm_classify.backends.openai import tokens

    counts = [tokens.count_text(s) for s in json.loads(sys.argv[1])]
    print(json.dumps({"counts": counts, "hello": tokens.encoding().encode("hello world")}))
    """
)


def _run_offline(env_update: dict[str, str]) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    }
    env.update(env_update)
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, json.dumps(SAMPLES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _reference_counts() -> list[int]:
    """bpe-openai's own (Rust) tokenizer, an independent implementation of o200k_base."""
    bpe_openai = pytest.importorskip("bpe_openai")
    enc = bpe_openai.get_encoding("o200k_base")
    return [len(enc.encode(s, disallowed_special=())) for s in SAMPLES]


def test_encoding_offline_seeds_an_empty_tiktoken_cache(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    result = _run_offline({"TIKTOKEN_CACHE_DIR": str(cache)})
    assert result["counts"][0] == 2  # "hello world" is 2 o200k tokens
    assert result["counts"] == _reference_counts()
    seeded = cache / hashlib.sha1(tokens.O200K_URL.encode()).hexdigest()
    assert hashlib.sha256(seeded.read_bytes()).hexdigest() == tokens.O200K_SHA256
    assert not list(cache.glob("*.tmp"))


def test_encoding_offline_with_cache_disabled() -> None:
    result = _run_offline({"TIKTOKEN_CACHE_DIR": ""})
    assert result["counts"] == _reference_counts()


def test_encoding_offline_with_unwritable_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _run_offline({"TIKTOKEN_CACHE_DIR": str(blocker / "cache")})
    assert result["counts"] == _reference_counts()


def test_fallback_encoding_matches_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network blocked by the test")

    monkeypatch.setattr("socket.socket.connect", refuse)
    built = tokens._build_encoding()
    loaded = tokens.encoding()
    assert built.name == loaded.name == "o200k_base"
    assert built.n_vocab == loaded.n_vocab
    assert built._special_tokens == loaded._special_tokens
    for s in SAMPLES:
        assert built.encode(s, disallowed_special=()) == loaded.encode(s, disallowed_special=())


def test_count_text_matches_bpe_openai() -> None:
    assert [count_text(s) for s in SAMPLES] == _reference_counts()
    assert count_text("") == 0


def test_count_chat_tokens_cookbook_example() -> None:
    # The OpenAI cookbook's "How to count tokens with tiktoken" example, which it reports as
    # 124 prompt tokens for gpt-4o, both by this rule and by the API.
    messages = [
        {
            "role": "system",
            "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "New synergies will help drive top-line growth.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Things working well together will increase revenue.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Let's talk later when we're less busy about how to do better.",
        },
        {
            "role": "user",
            "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
        },
    ]
    assert count_chat_tokens(messages) == 124


def test_count_chat_tokens_rule_and_image_parts() -> None:
    # 3 per message + "user" (1) + "hello world" (2) + 3 reply priming
    assert count_chat_tokens([{"role": "user", "content": "hello world"}]) == 9
    assert count_chat_tokens([{"role": "user", "content": "hello world"}], reply_priming=False) == 6
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/jpeg;base64,AAAA", "detail": "low"},
    }
    # image parts count 0 (the caller adds image_tokens); text parts count their text
    assert count_chat_tokens([{"role": "user", "content": [image]}]) == 3 + 1 + 3
    text = {"type": "text", "text": "hello world"}
    assert count_chat_tokens([{"role": "user", "content": [text, image]}]) == 3 + 1 + 2 + 3
    # a fine-tuning weight is not text
    assert (
        count_chat_tokens([{"role": "assistant", "content": "hello world", "weight": 1}])
        == 3 + 1 + 2 + 3
    )


def test_answer_tokens() -> None:
    assert tokens.answer_text("Beagle") == '{"label":"Beagle"}'
    assert tokens.answer_text("Beagle", "text") == "Beagle"
    assert tokens.completion_tokens("Beagle", "text") == count_text("Beagle")
    assert tokens.completion_tokens("Beagle") == count_text('{"label":"Beagle"}')


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # 500x375 fits 2048 and its short side is under 768: no resize, ceil(500/512) x
        # ceil(375/512) = 1 tile: 85 + 170 = 255
        ((500, 375), 255),
        # docs: 1024x1024 -> 768x768 -> 2x2 tiles: 85 + 4 x 170 = 765
        ((1024, 1024), 765),
        # docs: 2048x4096 -> 1024x2048 -> 768x1536 -> 2x3 tiles: 85 + 6 x 170 = 1105
        ((2048, 4096), 1105),
        # 4000x3000 -> 2048x1536 -> 1024x768 -> 2x2 tiles: 765
        ((4000, 3000), 765),
        # small images are not scaled up (128x64 bills one tile): 255
        ((128, 64), 255),
        # 513x500 needs 2x1 tiles: 85 + 340 = 425
        ((513, 500), 425),
    ],
)
def test_image_tokens_high(size: tuple[int, int], expected: int) -> None:
    assert image_tokens(*size, "high") == expected
    assert image_tokens(*size, "auto") == expected  # auto is counted as high


def test_image_tokens_low_and_models() -> None:
    assert image_tokens(4096, 8192, "low") == 85
    assert image_tokens(500, 375, "low", "openai/gpt-4o-2024-08-06") == 85
    assert image_tokens(500, 375, "low", "azure/gpt-4o-2024-08-06") == 85
    # gpt-4o-mini: 2833 base, 5667 per tile
    assert image_tokens(500, 375, "low", "openai/gpt-4o-mini-2024-07-18") == 2833
    assert image_tokens(1024, 1024, "high", "openai/gpt-4o-mini") == 2833 + 4 * 5667
    assert image_tokens(500, 375, "high", TileRule(base_tokens=10, tile_tokens=1)) == 11
    assert GPT4O_VISION.tile_px == 512
    with pytest.raises(ValueError, match="detail"):
        image_tokens(500, 375, "medium")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        image_tokens(0, 375, "high")
