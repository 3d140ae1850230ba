"""Which candidates become the sample: usable, not duplicated within a class, not shared across classes.

Identity is checked at three levels: the file's bytes (hashed for every candidate, so exact copies
anywhere in the tree are found without decoding), the decoded pixels and the prepared JPEG (for
the images actually decoded). Selection is deterministic: it walks each class's candidates in
sampling order, never in the order worker processes finish. Of exact file copies the first by
path is kept; of pixel-identical images, the first in sampling order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import ImageResult, content_path


@dataclass(eq=False)
class Candidate:
    """One file of one class, with what hashing and decoding found."""

    cls: int
    rel: str
    src: Path
    id: str
    image_base: str
    """The prepared file's path relative to the output folder, without content hash and suffix."""
    sha256: str = ""
    error: str = ""
    """Why the file could not even be hashed (unreadable, empty)."""
    result: ImageResult | None = None

    @property
    def image_path(self) -> str:
        """The prepared file's path relative to the output folder (known once decoded)."""
        if self.result is None or not self.result.ok:
            raise ValueError(f"{self.rel} has no prepared image")
        return content_path(self.image_base, self.result.image_sha256)

    def identity_keys(self) -> tuple[str, ...]:
        """Identity keys of a decoded image: its pixels and its prepared bytes."""
        r = self.result
        return (f"pixels:{r.pixel_sha256}", f"output:{r.image_sha256}") if r and r.ok else ()


class Selection:
    """Per-class walk over candidates in sampling order until `need` usable images are found."""

    def __init__(self, orders: list[list[Candidate]], labels: list[str], need: int) -> None:
        """`orders[i]` holds class i's candidates in sampling order; `labels[i]` names it in reports."""
        self.labels, self.need = labels, need
        self.static_skips: list[tuple[Candidate, str]] = []
        self.duplicates: list[dict[str, Any]] = []
        self.eligible: list[list[Candidate]] = [[] for _ in orders]
        self.pos = [0] * len(orders)
        self.key_classes: dict[str, set[int]] = defaultdict(set)
        self.key_cands: dict[str, list[Candidate]] = defaultdict(list)
        self._static_pass(orders)

    def _static_pass(self, orders: list[list[Candidate]]) -> None:
        """Drop files that failed to hash, byte copies within a class and byte copies across classes."""
        by_sha: dict[str, list[Candidate]] = defaultdict(list)
        for cands in orders:
            for c in cands:
                if not c.error:
                    by_sha[c.sha256].append(c)
        shared = {sha: cs for sha, cs in by_sha.items() if len({c.cls for c in cs}) > 1}
        for cs in sorted(shared.values(), key=lambda cs: min(c.rel for c in cs)):
            self._report_conflict("bytes", cs)
        # Of byte-identical copies within a class, the first by path is kept, whatever the sampling.
        original = {
            sha: min(cs, key=lambda c: c.rel) for sha, cs in by_sha.items() if sha not in shared
        }
        for ci, cands in enumerate(orders):
            for c in cands:
                if c.error:
                    self.static_skips.append((c, c.error))
                elif c.sha256 in shared:
                    self.static_skips.append((c, self._conflict_reason(c, shared[c.sha256])))
                elif original[c.sha256] is not c:
                    self._report_within("bytes", original[c.sha256], c)
                    self.static_skips.append((c, f"duplicate of {original[c.sha256].rel}"))
                else:
                    self.eligible[ci].append(c)

    def _conflict_reason(self, c: Candidate, group: list[Candidate]) -> str:
        """The skip reason of an image that also appears under another label."""
        others = sorted({self.labels[o.cls] for o in group if o.cls != c.cls})
        return f"same image also labelled {', '.join(others)} (conflicting labels)"

    def _report_within(self, by: str, kept: Candidate, dropped: Candidate) -> None:
        self.duplicates.append(
            {
                "kind": "within-class",
                "by": by,
                "class": self.labels[kept.cls],
                "kept": kept.rel,
                "dropped": dropped.rel,
            }
        )

    def _report_conflict(self, by: str, group: list[Candidate]) -> None:
        self.duplicates.append(
            {
                "kind": "across-classes",
                "by": by,
                "classes": sorted({self.labels[c.cls] for c in group}),
                "paths": sorted(c.rel for c in group),
            }
        )

    def record(self, decoded: list[Candidate]) -> None:
        """Register the identity keys of newly decoded candidates."""
        for c in decoded:
            for k in c.identity_keys():
                self.key_classes[k].add(c.cls)
                self.key_cands[k].append(c)

    def walk(self, ci: int) -> tuple[list[Candidate], list[tuple[Candidate, str, str]]]:
        """Usable candidates of class `ci` so far, and the rejected ones with reason and kind."""
        usable: list[Candidate] = []
        rejected: list[tuple[Candidate, str, str]] = []
        seen: dict[str, Candidate] = {}
        for c in self.eligible[ci][: self.pos[ci]]:
            r = c.result
            if r is None or not r.ok:
                rejected.append((c, r.reason if r else "not processed", "invalid"))
                continue
            keys = c.identity_keys()
            shared = [k for k in keys if len(self.key_classes[k]) > 1]
            if shared:
                rejected.append(
                    (c, self._conflict_reason(c, self.key_cands[shared[0]]), "conflict")
                )
                continue
            match = next((k for k in keys if k in seen), None)
            if match is not None:
                by = match.split(":", 1)[0]
                rejected.append((c, f"duplicate of {seen[match].rel}", f"duplicate:{by}"))
                continue
            for k in keys:
                seen[k] = c
            usable.append(c)
        return usable, rejected

    def next_wave(self) -> list[Candidate]:
        """The next candidates to decode: for each short class, as many more as it still lacks."""
        wave: list[Candidate] = []
        for ci in range(len(self.eligible)):
            lacking = self.need - len(self.walk(ci)[0])
            if lacking > 0:
                start = self.pos[ci]
                self.pos[ci] = min(len(self.eligible[ci]), start + lacking)
                wave.extend(self.eligible[ci][start : self.pos[ci]])
        return wave

    def finish(self) -> tuple[list[list[Candidate]], list[tuple[Candidate, str]]]:
        """The usable candidates per class (at most `need`) and every skipped file with its reason."""
        chosen: list[list[Candidate]] = []
        skips = list(self.static_skips)
        for ci in range(len(self.eligible)):
            usable, rejected = self.walk(ci)
            chosen.append(usable[: self.need])
            for c, reason, kind in rejected:
                skips.append((c, reason))
                if kind.startswith("duplicate:"):
                    self.duplicates.append(
                        {
                            "kind": "within-class",
                            "by": kind.split(":", 1)[1],
                            "class": self.labels[ci],
                            "kept": reason.removeprefix("duplicate of "),
                            "dropped": c.rel,
                        }
                    )
        reported: set[frozenset[int]] = set()
        shared = [k for k, cls in self.key_classes.items() if len(cls) > 1]
        for k in sorted(shared, key=lambda k: (not k.startswith("pixels:"), k)):
            group = self.key_cands[k]
            ident = frozenset(id(c) for c in group)
            if ident not in reported:
                reported.add(ident)
                self._report_conflict(k.split(":", 1)[0], group)
        return chosen, skips
