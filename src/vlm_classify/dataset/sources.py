"""Discover a source tree: Stanford Dogs (`Images/` or the folder holding it) or any class-per-folder tree.

Discovery only lists files; nothing is opened here, so it is fast even on the full 20,580 images.
Whatever cannot be listed (an unreadable folder, a symlink loop, a name that is not UTF-8) is
passed over with a note or a skip reason, never a crash.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..prompts import label_from_folder, normalize_label

STANFORD_IMAGES_DIR = "Images"
_FIX = "pass a folder with one sub-folder of images per class (or the folder holding Stanford Dogs' Images/), or the word stanford-dogs"

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
"""Raster formats tried as images; anything else (.eps, .pdf, .svg) is skipped unopened."""

BAD_NAME = "file name is not valid UTF-8: rename it"
SPLIT_NAMES = frozenset(
    {"train", "training", "val", "valid", "validation", "test", "testing", "dev"}
)
"""Folder names that say a tree is already split, so its sub-folders are the classes."""


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


def is_utf8(name: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python holds those as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str | os.PathLike[str]) -> str:
    """A path as printable, storable text: bytes that are not UTF-8 become `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
        raise UserError(f"{shown(path)} does not exist: {_FIX}")
    if not path.is_dir():
        raise UserError(f"{shown(path)} is a file, not a folder: {_FIX}")
    if (path / STANFORD_IMAGES_DIR).is_dir():
        return path / STANFORD_IMAGES_DIR, "stanford-dogs"
    if path.name == STANFORD_IMAGES_DIR:
        return path, "stanford-dogs"
    return path, "class-folders"


@dataclass
class _Listing:
    """A class folder's candidates and what listing it ran into."""

    files: list[str]
    direct: int
    """Candidates directly in the class folder (not in a sub-folder)."""
    errors: list[str]


def _class_files(root: Path, folder: str, tree: SourceTree) -> _Listing:
    """A class folder's image candidates (recursive, sorted, no hidden entries), never raising."""
    found: list[str] = []
    errors: list[str] = []
    hidden = 0
    top = root / folder

    def onerror(e: OSError) -> None:
        where = Path(e.filename).relative_to(root).as_posix() if e.filename else folder
        errors.append(f"cannot read {shown(where)} ({e.strerror or e})")

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if is_hidden(d):
                hidden += 1
            elif not is_utf8(d):
                tree.skipped.append((shown((here / d).relative_to(root).as_posix()), BAD_NAME))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if is_hidden(name):
                hidden += 1
                continue
            rel = (here / name).relative_to(root).as_posix()
            if not is_utf8(name):
                tree.skipped.append((shown(rel), BAD_NAME))
            elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(rel)
            else:
                tree.skipped.append(
                    (rel, f"not an image file ({Path(name).suffix or 'no extension'})")
                )
    if hidden:
        tree.notes.append(f"{folder}: ignored {hidden} hidden file(s) or folder(s)")
    direct = sum(1 for rel in found if rel.count("/") == folder.count("/") + 1)
    return _Listing(sorted(found), direct, errors)


def _check_layout(root: Path, nested: list[SourceClass], classes: list[SourceClass]) -> None:
    """Refuse a tree whose class folders hold only sub-folders: it is split already, or the
    path is one level too high (`train/cat` and `val/cat` would become classes `train`, `val`)."""
    split_like = [c.folder for c in nested if c.folder.casefold() in SPLIT_NAMES]
    if nested and (split_like or len(nested) == len(classes)):
        names = ", ".join(f"{c.folder}/" for c in nested[:4]) + (", ..." if len(nested) > 4 else "")
        raise UserError(
            f"{shown(root)} looks like it is split already, or one level too high: {names} hold "
            "only sub-folders of images; pass the folder whose sub-folders are the classes "
            f"(e.g. {shown(root / nested[0].folder)})"
        )


def _entries(root: Path) -> list[os.DirEntry[str]]:
    """The top-level entries of the source, sorted by name; an unreadable root is a UserError."""
    try:
        with os.scandir(root) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise UserError(
            f"cannot read {shown(root)} ({e.strerror or e}): check its permissions"
        ) from None


def discover(path: Path) -> SourceTree:
    """List the classes and candidate files under `path`; an empty tree is a UserError naming the fix."""
    root, layout = find_root(Path(path))
    tree = SourceTree(root=root, layout=layout, classes=[])
    keys: set[str] = set()
    labels: dict[str, tuple[str, str]] = {}
    nested: list[SourceClass] = []
    for entry in _entries(root):
        if is_hidden(entry.name):
            continue
        if not is_utf8(entry.name):
            tree.notes.append(f"ignored {shown(entry.name)}: {BAD_NAME}")
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as e:  # a symlink loop, a dangling network mount
            tree.notes.append(f"ignored {entry.name}: cannot read it ({e.strerror or e})")
            continue
        if not is_dir:
            tree.notes.append(
                f"ignored top-level file {entry.name} (images must sit in class folders)"
            )
            continue
        synset, label = label_from_folder(entry.name)
        norm = normalize_label(label)
        if not norm:
            tree.notes.append(f"ignored folder {entry.name!r}: it gives no label")
            continue
        listing = _class_files(root, entry.name, tree)
        tree.notes.extend(f"{entry.name}: {e}" for e in listing.errors)
        if not listing.files:
            if not listing.errors:
                tree.notes.append(f"ignored empty class folder {entry.name}")
            continue
        if norm in labels:
            folder, other = labels[norm]
            same = "" if other == label else " (ignoring case and punctuation)"
            raise UserError(
                f"folders {folder!r} and {entry.name!r} both give the label {other!r}{same}: "
                "rename or merge one of them"
            )
        labels[norm] = (entry.name, label)
        key = _unique(synset or slugify(entry.name), keys)
        stems: set[str] = set()
        files = [
            SourceFile(rel=rel, stem=_unique(safe_stem(Path(rel).stem), stems))
            for rel in listing.files
        ]
        cls = SourceClass(entry.name, synset, label, key, files)
        tree.classes.append(cls)
        if not listing.direct:
            nested.append(cls)
    if not tree.classes:
        raise UserError(f"no class folders with images under {shown(root)}: {_FIX}")
    _check_layout(root, nested, tree.classes)
    if len(tree.classes) < 2:
        raise UserError(
            f"{shown(root)} has one class folder with images ({tree.classes[0].folder}): a "
            "classifier needs at least two classes; add class folders, or pass the folder that "
            "holds them"
        )
    return tree
