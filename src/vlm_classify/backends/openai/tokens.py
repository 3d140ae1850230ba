"""Offline token counting: o200k_base text tokens, chat message overheads, vision image tokens.

Everything here works without the network: the o200k_base vocabulary comes from the file that
the `bpe-openai` package ships (byte-identical to OpenAI's, checked by sha256), never from
tiktoken's download.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import tempfile
import types
import uuid
from base64 import b64decode
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

from ...image_rules import GPT4O_VISION, PatchRule, TileRule, VisionRule, rule_tokens
from ...pricing import lookup
from .wire import AnswerMode, Detail

ENCODING_NAME = "o200k_base"
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
"""The URL tiktoken downloads from; its sha1 is the file name in tiktoken's cache."""
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
"""sha256 of the official o200k_base.tiktoken (the same hash tiktoken pins)."""

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
"""OpenAI cookbook rule for the gpt-4o family: every reply is primed with 3 tokens."""


# --- the encoding -------------------------------------------------------------------------------


def _vendored_vocab() -> bytes:
    """The decompressed o200k_base.tiktoken shipped by bpe-openai, hash-checked."""
    ref = resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz"
    data = gzip.decompress(ref.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise RuntimeError(
            f"bpe-openai's o200k_base file has sha256 {digest}, expected {O200K_SHA256}: "
            "reinstall bpe-openai (pip install --force-reinstall bpe-openai)"
        )
    return data


def _tiktoken_cache_dir() -> str | None:
    """The directory tiktoken reads (tiktoken/load.py: read_file_cached); None when disabled."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


def _seed_cache(cache_dir: str) -> bool:
    """Put the vocabulary where tiktoken looks for it, atomically; False if that is impossible."""
    path = Path(cache_dir) / hashlib.sha1(O200K_URL.encode()).hexdigest()
    try:
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == O200K_SHA256:
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(_vendored_vocab())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    """Parse a .tiktoken file: one `base64(token) rank` per line."""
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[b64decode(token)] = int(rank)
    return ranks


def _build_encoding() -> tiktoken.Encoding:
    """Build o200k_base from tiktoken_ext's own definition, with ranks from the vendored file.

    The definition function is re-bound to a copy of its module globals whose loader returns
    the vendored ranks, so the pattern and special tokens stay tiktoken's (no second copy here)
    and nothing global is patched.
    """
    from tiktoken_ext import openai_public

    def load_vendored(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if blobpath != O200K_URL or expected_hash not in (None, O200K_SHA256):
            raise RuntimeError(f"unexpected vocabulary {blobpath} ({expected_hash})")
        return _parse_ranks(_vendored_vocab())

    original = openai_public.o200k_base
    scope = {**vars(openai_public), "load_tiktoken_bpe": load_vendored}
    definition = types.FunctionType(original.__code__, scope, original.__name__)
    return tiktoken.Encoding(**definition())


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The o200k_base encoding (gpt-4o family), loaded offline.

    Seeds tiktoken's cache with the vendored vocabulary when it is missing, then lets tiktoken
    load it (tiktoken checks the hash itself). With the cache disabled (`TIKTOKEN_CACHE_DIR=""`)
    or unwritable, builds the encoding directly instead.
    """
    cache_dir = _tiktoken_cache_dir()
    if cache_dir is not None and _seed_cache(cache_dir):
        return tiktoken.get_encoding(ENCODING_NAME)
    return _build_encoding()


def count_text(text: str) -> int:
    """Number of o200k_base tokens in `text` (special-token strings count as plain text)."""
    return len(encoding().encode(text, disallowed_special=()))


# --- chat messages ------------------------------------------------------------------------------


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    total = 0
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("text", "input_text", "output_text"):
            total += count_text(str(part.get("text", "")))
        # image parts count 0 here: the caller adds image_tokens() for each image.
    return total


def count_chat_tokens(messages: Iterable[Mapping[str, Any]], *, reply_priming: bool = True) -> int:
    """Prompt tokens of a chat request by the OpenAI cookbook rule for the gpt-4o family.

    3 tokens per message, plus the tokens of its role and content, plus 1 for a `name`, plus
    3 that prime the reply. Image parts count 0: add `image_tokens()` per image yourself.
    Keys that are not text (a fine-tuning `weight`) are ignored.
    """
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value)
            elif key in ("role", "name") and isinstance(value, str):
                total += count_text(value)
                if key == "name":
                    total += TOKENS_PER_NAME
    if reply_priming:
        total += REPLY_PRIMING
    return total


def answer_text(label: str, answer: AnswerMode = "enum") -> str:
    """The text a model answers with: `{"label":"..."}` under structured output (`enum`), else
    the bare label (`text`, also what a fine-tuned model was trained to answer)."""
    if answer == "enum":
        return json.dumps({"label": label}, ensure_ascii=False, separators=(",", ":"))
    return label


def completion_tokens(label: str, answer: AnswerMode = "enum") -> int:
    """Output tokens of one answer naming `label` (see `answer_text`)."""
    return count_text(answer_text(label, answer))


# --- images -------------------------------------------------------------------------------------


def image_tokens(
    width: int, height: int, detail: Detail, model: str | VisionRule = GPT4O_VISION
) -> int:
    """Input tokens of one image of `width` x `height` pixels, by its model's rule.

    `model` is a `provider/model` string (its rule comes from the price table) or a rule. A
    `tile` rule (gpt-4o): `low` is a fixed count; `high` and `auto` count 512 px tiles after
    resizing. A `patch` rule (gpt-4.1-mini, gpt-5-mini, gpt-5.4...): 32 px patches within the
    model's budget for that detail, times its multiplier, rounded up. See `image_rules`.
    """
    rule = model if isinstance(model, TileRule | PatchRule) else lookup(model).vision
    return rule_tokens(width, height, detail, rule)


def schema_tokens(schema: Mapping[str, Any]) -> int:
    """Approximate prompt tokens a structured-output JSON schema adds to each request.

    The API bills them but does not publish how it renders the schema into the prompt; its compact
    JSON is the estimate used everywhere here (the estimate and the emulator's usage agree).
    """
    return count_text(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
