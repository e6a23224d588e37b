"""Stable hashing of text: the same number on every machine and Python process (unlike hash())."""

from __future__ import annotations

import hashlib


def stable_hash(text: str) -> int:
    """A 64-bit integer from `text` (blake2b)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def stable_fraction(text: str) -> float:
    """`text` mapped to [0, 1), for splits that never change (held-out problems)."""
    return stable_hash(text) / 2**64
