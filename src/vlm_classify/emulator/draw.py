"""Deterministic draws: every "random" choice of the emulator is a hash of its inputs.

The same seed and the same image (or request number) always give the same answer, fault and
latency, in any order and from any thread, so runs against the emulator are reproducible.
"""

from __future__ import annotations

import hashlib
import math
import string
from statistics import NormalDist

_ALPHABET = string.ascii_letters + string.digits
_STD_NORMAL = NormalDist()


def _digest(parts: tuple[object, ...]) -> bytes:
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def uniform(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`."""
    return int.from_bytes(_digest(parts)[:8], "big") / 2.0**64


def normal(*parts: object) -> float:
    """A standard normal number fixed by `parts`."""
    u = min(max(uniform(*parts), 1e-12), 1 - 1e-12)
    return _STD_NORMAL.inv_cdf(u)


def normal_cdf(z: float) -> float:
    """Φ(z): turns a standard normal number back into a uniform one."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def index(n: int, *parts: object) -> int:
    """An index in range(n) fixed by `parts` (n >= 1)."""
    return min(int(uniform(*parts) * n), n - 1)


def token(length: int, *parts: object) -> str:
    """An alphanumeric string of `length` characters fixed by `parts` (for object ids)."""
    out: list[str] = []
    counter = 0
    while len(out) < length:
        for byte in _digest((*parts, counter)):
            out.append(_ALPHABET[byte % len(_ALPHABET)])
        counter += 1
    return "".join(out[:length])


def hex_token(length: int, *parts: object) -> str:
    """A lowercase hex string of `length` characters fixed by `parts`."""
    out = ""
    counter = 0
    while len(out) < length:
        out += _digest((*parts, counter)).hex()
        counter += 1
    return out[:length]
