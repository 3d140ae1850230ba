from __future__ import annotations

import pytest

from vlm_classify.prompts import (
    answer_schema,
    label_from_folder,
    parse_answer,
    parse_enum_answer,
    system_prompt,
)

LABELS = [
    "Shih-Tzu",
    "Border Terrier",
    "Terrier",
    "Beagle",
    "Golden Retriever",
    "Black-And-Tan Coonhound",
]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("n02085620-Chihuahua", ("n02085620", "Chihuahua")),
        ("n02089078-black-and-tan_coonhound", ("n02089078", "Black-And-Tan Coonhound")),
        ("n02086240-Shih-Tzu", ("n02086240", "Shih-Tzu")),
        ("cats", ("", "cats")),
        ("golden_retriever", ("", "golden retriever")),
        ("n123-short", ("", "n123-short")),
    ],
)
def test_label_from_folder(folder: str, expected: tuple[str, str]) -> None:
    assert label_from_folder(folder) == expected


def test_full_prompt_is_the_study_wording_and_short_has_no_labels() -> None:
    full = system_prompt(["A", "B"], "full")
    assert (
        full == "Classify the following input image into one of the following categories: [A, B]."
    )
    assert "Beagle" not in system_prompt(LABELS, "short")
    with pytest.raises(ValueError):
        system_prompt(LABELS, "medium")  # type: ignore[arg-type]


def test_answer_schema_is_a_strict_enum_of_the_labels() -> None:
    schema = answer_schema(LABELS)
    assert schema["strict"] is True
    assert schema["schema"]["properties"]["label"]["enum"] == LABELS
    assert schema["schema"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Beagle", "Beagle"),
        ("beagle.", "Beagle"),
        ("  BEAGLE \n", "Beagle"),
        ("The dog is a Beagle.", "Beagle"),
        ('{"label": "Golden Retriever"}', "Golden Retriever"),
        ('```json\n{"label": "Golden Retriever"}\n```', "Golden Retriever"),
        ("```\nBeagle\n```", "Beagle"),
        ('"Beagle"', "Beagle"),
        ("shih tzu", "Shih-Tzu"),
        ("Shih Tzu", "Shih-Tzu"),
        ("black and tan coonhound", "Black-And-Tan Coonhound"),
        ("It is a Border Terrier", "Border Terrier"),  # 'Terrier' is part of it
        ("Terrier", "Terrier"),
        ("Beagle or Shih-Tzu", None),  # two labels: ambiguous
        ("", None),
        ("   ", None),
        (None, None),
        ("a cat", None),
        ("Beagles are great", None),  # not a whole-word match
        ("{not json", None),
    ],
)
def test_parse_answer(text: str | None, expected: str | None) -> None:
    assert parse_answer(text, LABELS) == expected


def test_parse_enum_answer() -> None:
    assert parse_enum_answer('{"label": "Beagle"}', LABELS) == "Beagle"
    assert parse_enum_answer('{"label": "beagle"}', LABELS) == "Beagle"
    assert parse_enum_answer('{"label": "Poodle"}', LABELS) is None
    assert parse_enum_answer('{"other": 1}', LABELS) is None
    assert parse_enum_answer("", LABELS) is None
    assert parse_enum_answer("Beagle", LABELS) == "Beagle"  # not JSON: parsed as text


def test_labels_are_one_line_nfc_and_exact_matches_win() -> None:
    assert label_from_folder("new\nline") == ("", "new line")
    assert label_from_folder("  two   spaces_x ") == ("", "two spaces x")
    decomposed = "Caf" + "e\u0301"  # macOS-style NFD
    assert label_from_folder(decomposed)[1] == "Caf\u00e9"
    assert parse_answer("Cat", ["Cat", "cat"]) == "Cat"
    assert parse_answer("cat", ["Cat", "cat"]) == "cat"
