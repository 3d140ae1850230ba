"""Label lists, prompt templates and the answer schema: pure functions, no I/O."""

from __future__ import annotations

from typing import Any, Literal

PromptStyle = Literal["full", "short"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("full", "short")

FULL_TEMPLATE = "Classify the following input image into one of the following categories: [{labels}]."
"""The original study's wording (about 495 o200k tokens with the 120 Stanford Dogs breeds)."""

SHORT_PROMPT = "Classify the following input image. Answer with the category name only."
"""No label list: for fine-tuned models, which learned the labels (about 5x fewer tokens)."""


def label_from_folder(name: str) -> tuple[str, str]:
    """Split a class folder name into `(synset, label)`.

    `n02085620-Chihuahua` gives `("n02085620", "Chihuahua")`; underscores become spaces and words
    are title-cased as the original study wrote them (`Black-And-Tan Coonhound`). A folder without
    a WordNet prefix keeps its whole name as the label and an empty synset.
    """
    synset, sep, rest = name.partition("-")
    if sep and len(synset) == 9 and synset[0] == "n" and synset[1:].isdigit() and rest:
        return synset, rest.replace("_", " ").title()
    return "", name.replace("_", " ").strip()


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
