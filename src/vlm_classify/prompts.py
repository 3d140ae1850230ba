"""Label lists, prompt templates and the answer schema: pure functions, no I/O."""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Literal

PromptStyle = Literal["full", "short"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("full", "short")

FULL_TEMPLATE = (
    "Classify the following input image into one of the following categories: [{labels}]."
)
"""The original study's wording (about 495 o200k tokens with the 120 Stanford Dogs breeds)."""

SHORT_PROMPT = "Classify the following input image. Answer with the category name only."
"""No label list: for fine-tuned models, which learned the labels (about 5x fewer tokens)."""


def label_from_folder(name: str) -> tuple[str, str]:
    """Split a class folder name into `(synset, label)`.

    `n02085620-Chihuahua` gives `("n02085620", "Chihuahua")`; underscores become spaces and words
    are title-cased as the original study wrote them (`Black-And-Tan Coonhound`). A folder without
    a WordNet prefix keeps its whole name as the label and an empty synset.
    """
    name = unicodedata.normalize("NFC", name)  # macOS stores names decomposed (NFD)
    synset, sep, rest = name.partition("-")
    if sep and len(synset) == 9 and synset[0] == "n" and synset[1:].isdigit() and rest:
        return synset, _clean(rest).title()
    return "", _clean(name)


def _clean(text: str) -> str:
    """Underscores, whitespace and control characters become single spaces (one label, one line)."""
    return " ".join("".join(" " if c == "_" or not c.isprintable() else c for c in text).split())


def system_prompt(labels: list[str], style: PromptStyle = "full") -> str:
    """The system message text for a classification request."""
    if style == "full":
        return FULL_TEMPLATE.format(labels=", ".join(labels))
    if style == "short":
        return SHORT_PROMPT
    raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")


def answer_schema(labels: list[str]) -> dict[str, Any]:
    """A strict structured-output schema whose only field is an enum of the labels."""
    return {
        "name": "classification",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(labels)}},
            "required": ["label"],
            "additionalProperties": False,
        },
    }


def normalize_label(text: str) -> str:
    """Lower case, every run of non-alphanumerics a single space: `Shih-Tzu` → `shih tzu`.

    Two labels with the same normal form cannot be told apart in an answer, so `prepare` refuses
    them.
    """
    return " ".join("".join(c if c.isalnum() else " " for c in text.casefold()).split())


def _unwrap(text: str) -> str:
    """Strip code fences and, when the text is a JSON object or string, take its label."""
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").strip()
        if "\n" in t and t.split("\n", 1)[0].strip().isalpha():  # ```json
            t = t.split("\n", 1)[1]
        t = t.strip()
    if t[:1] in '{"':
        try:
            value = json.loads(t)
        except ValueError:
            return t
        if isinstance(value, dict):
            for key in ("label", "category", "class", "breed", "answer"):
                if isinstance(value.get(key), str):
                    return value[key]
            strings = [v for v in value.values() if isinstance(v, str)]
            return strings[0] if len(strings) == 1 else t
        if isinstance(value, str):
            return value
    return t


def parse_answer(text: str | None, labels: list[str]) -> str | None:
    """The label a free-text answer names, or None when it names none or several.

    Tolerates code fences, JSON (`{"label": "Beagle"}`), sentences ("The dog is a Beagle."), and
    case, space and punctuation differences (`shih tzu` for `Shih-Tzu`). When the answer contains
    more than one label, the longest wins only if the others are part of it (`Terrier` inside
    `Border Terrier`); otherwise (`Beagle or Shih-Tzu`) the answer is ambiguous and invalid.
    """
    if not text or not text.strip():
        return None
    unwrapped = _unwrap(text).strip()
    if unwrapped in labels:  # exact first
        return unwrapped
    answer = normalize_label(unwrapped)
    if not answer:
        return None
    by_norm = {normalize_label(lb): lb for lb in labels}
    if answer in by_norm:
        return by_norm[answer]
    padded = f" {answer} "
    found = [n for n in by_norm if n and f" {n} " in padded]
    if not found:
        return None
    longest = max(found, key=len)
    if all(f" {n} " in f" {longest} " for n in found):
        return by_norm[longest]
    return None


def parse_enum_answer(text: str | None, labels: list[str]) -> str | None:
    """The label of a structured-output answer `{"label": "..."}`; None when it is not one."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return parse_answer(text, labels)
    if isinstance(value, dict) and isinstance(value.get("label"), str):
        return value["label"] if value["label"] in labels else parse_answer(value["label"], labels)
    return None
