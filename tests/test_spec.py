"""The shipped OpenAPI spec as JSON Schema 2020-12 validators."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from vlm_classify.backends.openai import spec

CHAT = "CreateChatCompletionRequest"


def _body() -> dict[str, Any]:
    return {
        "model": "gpt-4o-2024-08-06",
        "messages": [
            {
                "role": "system",
                "content": "Classify the following input image into one of the following categories: [A, B].",
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;base64,AAAA", "detail": "low"},
                    }
                ],
            },
        ],
        "max_completion_tokens": 20,
        "temperature": 0,
    }


def test_valid_chat_body_passes() -> None:
    assert spec.validate(CHAT, _body()) == []
    assert spec.is_valid(CHAT, _body())


def test_bad_detail_names_the_field() -> None:
    body = _body()
    body["messages"][1]["content"][0]["image_url"]["detail"] = "medium"
    errors = spec.validate(CHAT, body)
    assert len(errors) == 1
    assert errors[0].startswith("messages[1].content[0].image_url.detail: 'medium'")
    assert "'low'" in errors[0]


def test_missing_messages_names_the_field() -> None:
    body = _body()
    del body["messages"]
    assert spec.validate(CHAT, body) == ["(root): 'messages' is a required property"]


def test_wrong_role_names_the_field() -> None:
    body = _body()
    body["messages"][1]["role"] = "robot"
    (error,) = spec.validate(CHAT, body)
    assert error.startswith("messages[1].role: 'robot' is not a valid role")
    assert "'user'" in error


def test_wrong_content_type_and_part_type() -> None:
    body = _body()
    body["messages"][1]["content"] = 5
    assert spec.validate(CHAT, body) == [
        "messages[1].content: 5 is not of type 'string' or 'array'"
    ]
    body = _body()
    body["messages"][1]["content"][0]["type"] = "image"
    (error,) = spec.validate(CHAT, body)
    assert error.startswith("messages[1].content[0].type: 'image' is not a valid type")


def test_long_values_are_clipped_in_messages() -> None:
    body = _body()
    body["messages"][1]["content"][0]["image_url"]["url"] = 12345
    body["messages"][0]["content"] = ["x" * 5000]
    errors = spec.validate(CHAT, body)
    assert errors and all(len(e) < 500 for e in errors)


def test_nullable_and_bounds_are_normalised() -> None:
    body = _body()
    body.update(max_completion_tokens=None, n=None, seed=None, stop=None, logprobs=None)
    assert spec.validate(CHAT, body) == []
    body = _body()
    body["temperature"] = 3
    assert spec.validate(CHAT, body) == ["temperature: 3 is greater than the maximum of 2"]
    job = {"model": "gpt-4o-2024-08-06", "training_file": "file-abc"}
    ok = {**job, "hyperparameters": {"learning_rate_multiplier": 0.5}}
    zero = {**job, "hyperparameters": {"learning_rate_multiplier": 0}}
    assert spec.validate("CreateFineTuningJobRequest", ok) == []
    (error,) = spec.validate("CreateFineTuningJobRequest", zero)
    assert error.startswith("hyperparameters.learning_rate_multiplier: 0 is less than or equal")


def test_normalise_rewrites_openapi_30_habits() -> None:
    assert spec.normalise({"type": "integer", "nullable": True}) == {"type": ["integer", "null"]}
    assert spec.normalise({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert spec.normalise({"$ref": "#/x", "nullable": True, "description": "d"}) == {
        "description": "d",
        "anyOf": [{"$ref": "#/x"}, {"type": "null"}],
    }
    assert spec.normalise({"allOf": [{"$ref": "#/x"}, {"nullable": True}]}) == {
        "anyOf": [{"allOf": [{"$ref": "#/x"}]}, {"type": "null"}]
    }
    assert spec.normalise({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number",
        "exclusiveMinimum": 0,
    }
    assert spec.normalise({"type": "number", "maximum": 1, "exclusiveMaximum": False}) == {
        "type": "number",
        "maximum": 1,
    }
    # data is left alone
    assert spec.normalise({"example": {"nullable": True}}) == {"example": {"nullable": True}}


def test_no_openapi_30_habits_left() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "nullable" not in node or not isinstance(node["nullable"], bool)
            for key in ("exclusiveMinimum", "exclusiveMaximum"):
                assert not isinstance(node.get(key), bool)
            for key, value in node.items():
                if key not in ("example", "examples", "default", "enum", "const"):
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec.load_spec()["components"]["schemas"])


@pytest.mark.parametrize(
    "name",
    [
        CHAT,
        "ChatCompletionRequestMessage",
        "FineTuneChatCompletionRequestAssistantMessage",
        "CreateChatCompletionResponse",
        "CreateBatchRequest",
        "CreateFineTuningJobRequest",
        "Batch",
        "FineTuningJob",
        "OpenAIFile",
    ],
)
def test_schemas_the_project_speaks_are_valid_2020_12(name: str) -> None:
    Draft202012Validator.check_schema(spec.load_spec()["components"]["schemas"][name])
    assert spec.validator(name) is spec.validator(name)  # built once


def test_unknown_schema_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        spec.validator("NoSuchSchema")


def test_validate_does_not_mutate_the_spec() -> None:
    before = copy.deepcopy(spec.load_spec()["components"]["schemas"][CHAT])
    spec.validate(CHAT, {"model": 1})
    assert spec.load_spec()["components"]["schemas"][CHAT] == before
