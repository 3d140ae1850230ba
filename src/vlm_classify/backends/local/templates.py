"""Prompt templates of CLIP zero-shot: the shipped set (data/clip_templates.json) or a user's
file. No torch here: `classify` reads them to bind an arm to its templates before any model loads."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from ...errors import UserError


def load_templates(path: Path | None = None) -> list[str]:
    """The prompt templates of `path` (a JSON list, or `{"templates": [...]}`), or the shipped
    set; each has one `{}` where the label goes."""
    where = str(path) if path else "the shipped data/clip_templates.json"
    try:
        if path:
            text = Path(path).read_text(encoding="utf-8")
        else:
            text = (resources.files("vlm_classify") / "data" / "clip_templates.json").read_text(
                "utf-8"
            )
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise UserError(f"--templates {where}: cannot read it ({e})") from None
    templates = data.get("templates") if isinstance(data, dict) else data
    if (
        not isinstance(templates, list)
        or not templates
        or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
    ):
        raise UserError(
            f'{where}: write a JSON list of templates (or {{"templates": [...]}}), each with '
            'one {} for the label, e.g. "a photo of a {}."'
        )
    return list(templates)


def templates_identity(path: Path | None = None) -> str:
    """What an arm records of its templates: a hash of the list itself (a file renamed or
    moved is the same templates; one edited is not)."""
    return hashlib.sha256(json.dumps(load_templates(path)).encode()).hexdigest()[:16]
