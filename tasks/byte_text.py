"""Byte-level text helpers shared by Text (IMDB) and Retrieval (AAN), spec: shared/spec/lra.md §3.

LRA's `ByteTextEncoder` (tokenizer `char`) maps the UTF-8 bytes of a document to ids byte+1, so id 0
stays free for padding and the vocabulary has 257 entries. Truncation cuts the byte string, which
may split a multi-byte character; that is what LRA does too.

Also here: the random "filler" prose of the synthetic stand-ins (lowercase pseudo-words, so planted
uppercase markers can never occur by chance).
"""

from __future__ import annotations

import numpy as np
import torch

BYTE_VOCAB = 257  # 256 byte values + pad 0
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def encode_documents(docs: list[bytes], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents -> inputs (N, seq_len) int16 ids (byte+1, 0 = pad) and lengths (N,) int64.

    An empty document keeps length 1 (a single pad position) so its padding mask is not all True.
    """
    inputs = np.zeros((len(docs), seq_len), dtype=np.int16)
    lengths = np.ones(len(docs), dtype=np.int64)
    for i, doc in enumerate(docs):
        ids = np.frombuffer(doc[:seq_len], dtype=np.uint8)
        inputs[i, : len(ids)] = ids.astype(np.int16) + 1
        lengths[i] = max(len(ids), 1)
    return torch.from_numpy(inputs), torch.from_numpy(lengths)


def decode_ids(ids: torch.Tensor, length: int) -> bytes:
    """Inverse of `encode_documents` for one row (tests and debugging)."""
    return bytes((ids[:length].to(torch.int64) - 1).clamp_min(0).tolist())


def filler(rng: np.random.Generator, n_bytes: int) -> bytearray:
    """`n_bytes` of lowercase pseudo-words (2-9 letters) separated by single spaces."""
    letters = LETTERS[rng.integers(0, 26, size=n_bytes)]  # (n_bytes,) random letters
    word_ends = np.cumsum(rng.integers(2, 10, size=n_bytes // 3 + 1) + 1) - 1  # a space after each word
    letters[word_ends[word_ends < n_bytes]] = ord(" ")
    return bytearray(letters.tobytes())


def plant(doc: bytearray, rng: np.random.Generator, token: bytes, forbidden: list[tuple[int, int]]) -> int:
    """Overwrite `doc` with `token` at a random position not overlapping the `forbidden` spans.

    Returns the start position and appends the new span to `forbidden`. The caller keeps documents
    long enough (at least 4x the planted bytes), so a free spot exists.
    """
    for _ in range(1000):
        start = int(rng.integers(0, len(doc) - len(token) + 1))
        end = start + len(token)
        if all(end + 1 <= a or start >= b + 1 for a, b in forbidden):
            doc[start:end] = token
            forbidden.append((start, end))
            return start
    raise RuntimeError(f"no free position for {len(token)} bytes in a {len(doc)}-byte document")
