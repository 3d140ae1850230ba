"""Ground truth in, answers out: which label a model gives for an image, and how it says it.

An image's correctness is drawn once per (seed, image, model kind) from a difficulty that is
partly shared by its class and by all models, so per-class accuracy varies and base and
fine-tuned models tend to miss the same hard images. A wrong answer is a confusable neighbour of
the true label (one sharing a word, like two terriers), so confusion pairs look realistic.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..dataset.manifest import LABELS_NAME, MANIFEST_NAME, read_labels, read_manifest
from ..errors import UserError
from . import draw

NEIGHBOUR_WEIGHTS = (0.6, 0.25, 0.15)
"""How often a wrong answer is the 1st, 2nd or 3rd most confusable label."""


@dataclass(frozen=True)
class KnownImage:
    """What the manifest says about one prepared image."""

    label: str
    width: int
    height: int


class GroundTruth:
    """Labels of the prepared images, by the sha256 of their bytes and by their relative path."""

    def __init__(self) -> None:
        self.by_sha: dict[str, KnownImage] = {}
        self.sha_by_path: dict[str, str] = {}
        self.labels: list[str] = []

    @classmethod
    def load(cls, paths: list[Path]) -> GroundTruth:
        """Read each prepared directory (or its manifest.csv); errors are one UserError line."""
        truth = cls()
        for path in paths:
            path = Path(path)
            root = path.parent if path.name == MANIFEST_NAME or path.is_file() else path
            if not (root / MANIFEST_NAME).is_file():
                raise UserError(
                    f"--manifest: no {MANIFEST_NAME} at {root}; pass a folder made by `vlm-classify prepare`"
                )
            rows = read_manifest(root)
            labels = (
                read_labels(root)
                if (root / LABELS_NAME).is_file()
                else sorted({r.label for r in rows})
            )
            for label in labels:
                if label not in truth.labels:
                    truth.labels.append(label)
            for row in rows:
                truth.by_sha[row.image_sha256] = KnownImage(row.label, row.width, row.height)
                truth.sha_by_path[row.image_path.replace("\\", "/")] = row.image_sha256
        return truth

    def sha_for_url(self, url: str) -> str | None:
        """The image a plain URL points to, when it ends with a manifest `image_path`."""
        path = url.split("?", 1)[0].split("#", 1)[0]
        for rel, sha in self.sha_by_path.items():
            if path.endswith("/" + rel) or path == rel:
                return sha
        return None


@dataclass(frozen=True)
class Decision:
    """The answer a model gives for one image."""

    label: str
    """The label the model names (before any messy rendering)."""
    truth: str | None
    """The ground-truth label; None for an image not in the manifest."""
    confidence: float
    """Probability the model puts on `label` (drives logprobs)."""
    alternatives: tuple[str, ...]
    """Other labels the model considered, most likely first."""

    @property
    def known(self) -> bool:
        return self.truth is not None


_WORD = re.compile(r"[a-z0-9]+")


def _words(label: str) -> set[str]:
    return {w for w in _WORD.findall(label.lower()) if len(w) > 2}


class Oracle:
    """Decides and renders answers; thread-safe (it holds no mutable state but caches)."""

    def __init__(
        self,
        truth: GroundTruth,
        seed: int = 0,
        class_effect: float = 0.25,
        kind_correlation: float = 0.6,
        invalid_rate: float = 0.02,
    ) -> None:
        self.truth = truth
        self.seed = seed
        self.class_effect = class_effect
        self.kind_correlation = kind_correlation
        self.invalid_rate = invalid_rate

    # --- deciding ------------------------------------------------------------------------------

    def difficulty(self, image_sha: str, label: str, kind: str) -> float:
        """A uniform number per (image, kind): the image is answered right when it is < accuracy.

        It mixes a class effect and an image effect shared by all kinds with a kind-specific part,
        through normal scores, so its distribution stays uniform whatever the mix.
        """
        c, rho = self.class_effect, self.kind_correlation
        shared = math.sqrt(c) * draw.normal(self.seed, "class", label) + math.sqrt(
            1 - c
        ) * draw.normal(self.seed, "image", image_sha)
        z = rho * shared + math.sqrt(1 - rho * rho) * draw.normal(
            self.seed, "kind", kind, image_sha
        )
        return draw.normal_cdf(z)

    def decide(
        self, image_sha: str, kind: str, accuracy: float, allowed: list[str] | None = None
    ) -> Decision:
        """The label a model of `kind` gives for an image, among `allowed` (default: all labels)."""
        labels = list(allowed) if allowed else list(self.truth.labels)
        known = self.truth.by_sha.get(image_sha)
        if not labels:
            return Decision("unknown", known.label if known else None, 0.5, ())
        if known is None or known.label not in labels:
            # Not in the manifest: a fixed guess among the labels, with middling confidence.
            guess = labels[draw.index(len(labels), self.seed, "unknown", image_sha)]
            others = tuple(lb for lb in self.neighbours(guess, tuple(labels)))
            conf = 0.3 + 0.4 * draw.uniform(self.seed, "conf", kind, image_sha)
            return Decision(guess, known.label if known else None, conf, others)
        truth = known.label
        neighbours = self.neighbours(truth, tuple(labels))
        u = self.difficulty(image_sha, truth, kind)
        if u < accuracy or not neighbours:
            conf = 0.6 + 0.399 * math.sqrt(draw.uniform(self.seed, "conf", kind, image_sha))
            return Decision(truth, truth, conf, neighbours)
        r = draw.uniform(self.seed, "wrong", kind, image_sha)
        weights = NEIGHBOUR_WEIGHTS[: len(neighbours)]
        pick, acc = len(weights) - 1, 0.0
        for i, w in enumerate(weights):
            acc += w / sum(weights)
            if r < acc:
                pick = i
                break
        wrong = neighbours[pick]
        conf = 0.3 + 0.55 * draw.uniform(self.seed, "conf", kind, image_sha)
        others = (truth, *(n for n in neighbours if n != wrong))
        return Decision(wrong, truth, conf, others)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one oracle per emulator, bounded cache
    def neighbours(self, label: str, labels: tuple[str, ...]) -> tuple[str, ...]:
        """Up to three labels most confusable with `label`: shared words first, then a fixed draw."""
        mine = _words(label)
        scored = sorted(
            (lb for lb in labels if lb != label),
            key=lambda lb: (
                -(len(mine & _words(lb)) + 0.9 * draw.uniform(self.seed, "neighbour", label, lb))
            ),
        )
        return tuple(scored[: len(NEIGHBOUR_WEIGHTS)])

    # --- rendering -----------------------------------------------------------------------------

    def structured(self, decision: Decision, key: str = "label") -> str:
        """Structured-output content: `{"label":"..."}`, always one of the schema's labels."""
        return json.dumps({key: decision.label}, ensure_ascii=False, separators=(",", ":"))

    def free_text(self, decision: Decision, image_sha: str, kind: str) -> str:
        """Free-text content: the label, or now and then (`invalid_rate`) a messy answer."""
        label = decision.label
        if draw.uniform(self.seed, "messy", kind, image_sha) >= self.invalid_rate:
            return label
        other = decision.alternatives[0] if decision.alternatives else "something else"
        variants = (
            f"The image shows a {label}.",
            f'```json\n{{"label": "{label}"}}\n```',
            label.lower(),
            f"**{label}**",
            f"{label}.",
            "",
            f"It could be a {label} or a {other}.",
            "I cannot tell from this image.",
        )
        return variants[draw.index(len(variants), self.seed, "variant", kind, image_sha)]
