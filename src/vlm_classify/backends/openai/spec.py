"""The shipped OpenAI OpenAPI description, as JSON Schema 2020-12 validators.

The spec is OpenAPI 3.1 but keeps two 3.0 habits (`nullable: true`, boolean `exclusiveMinimum`),
so it is normalised once on load. Validators are built once per schema name and cached: the
emulator validates every request body with them, so nothing here is rebuilt per call.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILE = "openai-openapi.json"
SPEC_URI = "urn:vlm-classify:openai-openapi"
"""The base URI the spec is registered under, so its `#/components/schemas/...` refs resolve."""

# Keywords whose values are data, not subschemas: never rewritten.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "example", "examples", "x-oaiMeta"})
# Keywords that only describe; they stay on the outside when a schema is wrapped for `nullable`.
_ANNOTATIONS = frozenset({"title", "description", "deprecated", "default", "example", "examples"})
_COMBINATORS = ("$ref", "oneOf", "anyOf", "allOf", "not", "if")


def _is_null_marker(node: Any) -> bool:
    """`{"nullable": true}` alone (maybe with a description): the 3.0 way to say "or null" in allOf."""
    return (
        isinstance(node, dict)
        and node.get("nullable") is True
        and set(node) <= {"nullable", "description", "title"}
    )


def normalise(node: Any) -> Any:
    """Return a copy of an OpenAPI 3.1 schema with its 3.0 habits rewritten as JSON Schema 2020-12.

    `nullable: true` becomes `"null"` in the type (and `None` in an enum), or an `anyOf` with
    `{"type": "null"}` around a `$ref`/combinator; a bare `{"nullable": true}` member of `allOf`
    makes the whole `allOf` nullable. Boolean `exclusiveMinimum`/`exclusiveMaximum` take the
    value of `minimum`/`maximum`.
    """
    if isinstance(node, list):
        return [normalise(x) for x in node]
    if not isinstance(node, dict):
        return node
    nullable = node.get("nullable") is True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "nullable":
            continue
        if key == "allOf" and isinstance(value, list) and any(_is_null_marker(m) for m in value):
            nullable = True
            value = [m for m in value if not _is_null_marker(m)]
            if not value:
                continue
        out[key] = value if key in _DATA_KEYWORDS else normalise(value)
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        flag = out.get(exclusive)
        if isinstance(flag, bool):
            del out[exclusive]
            if flag and bound in out:
                out[exclusive] = out.pop(bound)
    if nullable:
        out = _make_nullable(out)
    return out


def _make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if any(k in schema for k in _COMBINATORS):
        core = {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
        outer = {k: v for k, v in schema.items() if k in _ANNOTATIONS}
        if set(core) == {"anyOf"}:
            outer["anyOf"] = [*core["anyOf"], {"type": "null"}]
        else:
            outer["anyOf"] = [core, {"type": "null"}]
        return outer
    kind = schema.get("type")
    if isinstance(kind, str) and kind != "null":
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        schema["type"] = [*kind, "null"]
    elif kind is None and "enum" not in schema:
        return schema  # no type and no enum: it already admits null
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


@functools.cache
def load_spec() -> dict[str, Any]:
    """The shipped spec, normalised (loaded once; treat the result as read-only)."""
    raw = (
        resources.files("vlm_classify")
        .joinpath("data")
        .joinpath(SPEC_FILE)
        .read_text(encoding="utf-8")
    )
    spec: dict[str, Any] = normalise(json.loads(raw))
    return spec


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    """A cached 2020-12 validator for `#/components/schemas/<schema_name>` (KeyError if unknown)."""
    if schema_name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_FILE}")
    ref = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(ref, registry=_registry())


def validate(schema_name: str, instance: Any) -> list[str]:
    """Readable problems with `instance` against a spec schema: `path: message`; empty when valid."""
    return [format_error(e) for e in iter_leaf_errors(validator(schema_name), instance)]


def is_valid(schema_name: str, instance: Any) -> bool:
    """True when `instance` matches the schema (the fast path: no error objects are built)."""
    return bool(validator(schema_name).is_valid(instance))


def iter_leaf_errors(v: Draft202012Validator, instance: Any) -> Iterable[ValidationError]:
    """Each error of `instance`, with `oneOf`/`anyOf` failures replaced by the most telling cause."""
    for error in v.iter_errors(instance):
        yield _leaf(error)


def _leaf(error: ValidationError) -> ValidationError:
    """Descend into a failed `oneOf`/`anyOf` to the branch the instance was evidently meant for.

    A branch is ruled out when it fails on a tag (an `enum`/`const` on a direct property: OpenAI
    tags messages by `role` and content parts by `type`) or on the instance's own type. When every
    branch is ruled out, the tag or the type itself is wrong, and that is the error reported.
    """
    while error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        candidates = [
            errs
            for errs in branches.values()
            if not any(_is_tag_error(e) or _is_type_error(e) for e in errs)
        ]
        if not candidates:
            return _mismatch_error(error)
        errs = min(candidates, key=len)
        error = max(errs, key=relevance)
    return error


def _is_tag_error(e: ValidationError) -> bool:
    return len(e.relative_path) == 1 and e.validator in ("enum", "const")


def _is_type_error(e: ValidationError) -> bool:
    return not e.relative_path and e.validator == "type"


def _mismatch_error(parent: ValidationError) -> ValidationError:
    """One error for a `oneOf`/`anyOf` whose every branch wants another tag or another type."""
    tags = [e for e in parent.context if _is_tag_error(e)]
    names = {e.relative_path[0] for e in tags}
    if len(names) == 1:
        name = names.pop()
        allowed: list[Any] = []
        for e in tags:
            values = e.validator_value if e.validator == "enum" else [e.validator_value]
            allowed.extend(v for v in values if v not in allowed)
        return ValidationError(
            f"{_short(tags[0].instance)} is not a valid {name}; expected one of {allowed}",
            validator=tags[0].validator,
            path=[*parent.absolute_path, name],
            instance=tags[0].instance,
        )
    types: list[str] = []
    for e in parent.context:
        if _is_type_error(e):
            values = (
                e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
            )
            types.extend(t for t in values if t not in types)
    if types and not tags:
        return ValidationError(
            f"{_short(parent.instance)} is not of type {' or '.join(map(repr, types))}",
            validator="type",
            path=list(parent.absolute_path),
            instance=parent.instance,
        )
    return parent


def format_error(error: ValidationError, limit: int = 300) -> str:
    """`messages[1].content[0].image_url.detail: 'medium' is not one of [...]`, at most ~`limit` chars."""
    return f"{json_path(error.absolute_path)}: {_clip(error.message, limit)}"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...({len(text) - 2 * half} chars)...{text[-half:]}"


def _short(value: Any, limit: int = 80) -> str:
    return _clip(repr(value), limit)


def json_path(path: Iterable[Any]) -> str:
    """A readable path: `messages[1].role`; `(root)` for the instance itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"
