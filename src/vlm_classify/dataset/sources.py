"""Discover a source tree: Stanford Dogs (`Images/` or the folder holding it) or any class-per-folder tree.

Discovery only lists files; nothing is opened here, so it is fast even on the full 20,580 images.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..prompts import label_from_folder

STANFORD_IMAGES_DIR = "Images"
_FIX = "pass a folder with one sub-folder of images per class (or the folder holding Stanford Dogs' Images/), or the word stanford-dogs"


@dataclass(frozen=True)
class SourceFile:
    """One candidate image of a class."""

    rel: str
    """Path relative to the source root, forward slashes: the manifest's `source_path`."""
    stem: str
    """Filesystem-safe stem, unique within its class: `<class_key>/<stem>` is the manifest id."""


@dataclass
class SourceClass:
    """One class folder and its candidate files, sorted by path."""

    folder: str
    synset: str
    label: str
    key: str
    """Filesystem-safe class directory name: the synset, or a slug of the folder name."""
    files: list[SourceFile] = field(default_factory=list)


@dataclass
class SourceTree:
    """What discovery found: classes with candidates, files passed over, and notes for the report."""

    root: Path
    layout: str
    """`stanford-dogs` when an `Images/` folder was found, else `class-folders`."""
    classes: list[SourceClass]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, reason) of files that are not image candidates."""
    notes: list[str] = field(default_factory=list)


def is_hidden(name: str) -> bool:
    """Dotfiles and dot-folders (`.DS_Store`, `._x.jpg`, `.git`) are never data."""
    return name.startswith(".")


def slugify(name: str) -> str:
    """A lowercase ASCII slug safe on every filesystem (`Golden Retriever!` -> `golden-retriever`)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug or "x" + hashlib.sha1(name.encode()).hexdigest()[:8]


def safe_stem(stem: str) -> str:
    """A file stem reduced to `[A-Za-z0-9._-]` so ids and output paths are portable."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return cleaned[:120]


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... whichever is free first, ignoring case; records it in `taken`."""
    candidate, n = name, 2
    while candidate.lower() in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def find_root(path: Path) -> tuple[Path, str]:
    """The class-folder root of a source path and its layout; a missing path is a UserError."""
    if not path.exists():
        raise UserError(f"{path} does not exist: {_FIX}")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder: {_FIX}")
    if (path / STANFORD_IMAGES_DIR).is_dir():
        return path / STANFORD_IMAGES_DIR, "stanford-dogs"
    if path.name == STANFORD_IMAGES_DIR:
        return path, "stanford-dogs"
    return path, "class-folders"


def _class_files(root: Path, folder: str, exts: set[str], tree: SourceTree) -> list[str]:
    """Relative paths of a class folder's image candidates (recursive, sorted, no hidden entries)."""
    found: list[str] = []
    hidden = 0
    for dirpath, dirnames, filenames in os.walk(root / folder, followlinks=False):
        hidden += sum(1 for d in dirnames if is_hidden(d))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in filenames:
            if is_hidden(name):
                hidden += 1
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if Path(name).suffix.lower() in exts:
                found.append(rel)
            else:
                tree.skipped.append(
                    (rel, f"not an image file ({Path(name).suffix or 'no extension'})")
                )
    if hidden:
        tree.notes.append(f"{folder}: ignored {hidden} hidden file(s) or folder(s)")
    return sorted(found)


def discover(path: Path) -> SourceTree:
    """List the classes and candidate files under `path`; an empty tree is a UserError naming the fix."""
    root, layout = find_root(Path(path))
    exts = {e.lower() for e in Image.registered_extensions()}
    tree = SourceTree(root=root, layout=layout, classes=[])
    keys: set[str] = set()
    labels: dict[str, str] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if is_hidden(entry.name):
            continue
        if not entry.is_dir(follow_symlinks=True):
            tree.notes.append(
                f"ignored top-level file {entry.name} (images must sit in class folders)"
            )
            continue
        synset, label = label_from_folder(entry.name)
        if not label:
            tree.notes.append(f"ignored folder {entry.name!r}: it gives no label")
            continue
        if label in labels:
            raise UserError(
                f"folders {labels[label]!r} and {entry.name!r} both give the label {label!r}: "
                "rename or merge one of them"
            )
        labels[label] = entry.name
        key = _unique(synset or slugify(entry.name), keys)
        rels = _class_files(root, entry.name, exts, tree)
        if not rels:
            tree.notes.append(f"ignored empty class folder {entry.name}")
            continue
        stems: set[str] = set()
        files = []
        for rel in rels:
            stem = _unique(safe_stem(Path(rel).stem), stems)
            files.append(SourceFile(rel=rel, stem=stem))
        tree.classes.append(SourceClass(entry.name, synset, label, key, files))
    if not tree.classes:
        raise UserError(f"no class folders with images under {root}: {_FIX}")
    return tree
