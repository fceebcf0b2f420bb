"""Tokenized samples: token ids plus the target region that masking and scoring may touch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One tokenized sample.

    ``input_ids`` has shape [pos]; the target region is [target_start, target_end): the response when the
    data have prompt/response, else the whole text without special tokens.
    """

    sample_id: str
    input_ids: np.ndarray
    target_start: int
    target_end: int
    category: str = ""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def target_length(self) -> int:
        return self.target_end - self.target_start


def pack_samples(samples: list[Sample]) -> dict[str, np.ndarray]:
    """Ragged samples as flat arrays (no pickle needed): ids concatenated, ``offsets`` [n + 1]."""
    lengths = np.array([s.length for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate([s.input_ids for s in samples]) if samples else np.zeros(0, np.int64)
    return {
        "input_ids": flat.astype(np.int64),
        "offsets": offsets,
        "target_start": np.array([s.target_start for s in samples], dtype=np.int64),
        "target_end": np.array([s.target_end for s in samples], dtype=np.int64),
        "sample_ids": np.array([s.sample_id for s in samples], dtype=str),
        "categories": np.array([s.category for s in samples], dtype=str),
    }


def unpack_samples(arrays) -> list[Sample]:
    """Inverse of :func:`pack_samples`."""
    offsets = arrays["offsets"]
    return [
        Sample(
            sample_id=str(arrays["sample_ids"][i]),
            input_ids=np.asarray(arrays["input_ids"][offsets[i] : offsets[i + 1]], dtype=np.int64),
            target_start=int(arrays["target_start"][i]),
            target_end=int(arrays["target_end"][i]),
            category=str(arrays["categories"][i]),
        )
        for i in range(len(offsets) - 1)
    ]
