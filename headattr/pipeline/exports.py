"""The users' file formats: ``head_importance.pt`` and ``per_sample_ig.pt`` out, ``head_importance.pt`` in.

Written beside every aggregated dump, both load with ``torch.load(path, weights_only=True)`` (no pickle):
- ``head_importance.pt``: ``{"importance_scores": {layer: float32 tensor [n_heads]}, "metadata": {...},
  "headattr_importance": {layer: float32 tensor [n_heads]}}``, one entry per attributed layer.
  ``importance_scores`` is in the users' convention: mean over samples of ``ig_postprocess(IG of the loss)``
  (signed: IG, abs: |IG|, relu: max(IG, 0)), what their script writes and their pruning code ranks;
  ``headattr_importance`` is ours, the importance column of ``heads.csv`` (mean of f(-IG), larger = lowers the
  loss more), which their loader ignores. Metadata records both conventions, our settings and the sample ids.
- ``per_sample_ig.pt``: ``{"per_sample_ig": float32 [N, n_attributed_layers * n_heads], "note": str}``: each
  sample's raw signed IG of the loss (mean over mask probabilities and paths, before post-processing), layer-major
  over the attributed layers, as the users' ``--debug_save_per_sample`` writes it.

Imports (``compare.importance_files``) are read with ``weights_only=True`` and checked against the model shape,
then put in our convention: ``headattr_importance`` when the file has it, else ``importance_scores`` negated when
the metadata's ``ig_postprocess`` is signed or relu (their scores are IG of the loss, ours -IG), as is otherwise.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..models.loading import model_shape
from .aggregate import attributed_layers, per_sample_scores, score_matrix
from .dumps import atomic_write, read_meta

NOTE = (
    "Per-sample IG of the loss (signed, before post-processing; mean over mask probabilities and paths); "
    "columns layer-major over the attributed layers: {layers}, {n_heads} heads each. Written by headattr."
)


USERS_CONVENTION = "mean over samples of ig_postprocess(IG of the loss) per sample (the users' script)"
HEADATTR_CONVENTION = "mean over samples of postprocess(-IG of the loss) per sample; larger = more important"
NEGATED = ("signed", "relu")
"""Users' ig_postprocess values whose scores are IG of the loss (larger = raises the loss), ours -IG."""


def users_scores(x: np.ndarray, postprocess: str) -> np.ndarray:
    """The users' importance [L, H] from per-sample IG of the loss ``x`` [N, L, H]: mean_i g(x_i), g = identity
    (signed), |.| (abs), max(., 0) (relu), applied per sample as their script does."""
    g = {"signed": lambda v: v, "abs": np.abs, "relu": lambda v: np.maximum(v, 0.0)}[postprocess]
    return g(np.asarray(x, dtype=np.float64)).mean(0)


def _save(path, obj) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _by_layer(matrix: np.ndarray, layers: list[int]) -> dict:
    return {int(layer): torch.tensor(matrix[layer], dtype=torch.float32) for layer in layers}


def write_exports(arrays: dict, heads: pd.DataFrame, importance_out, per_sample_out) -> dict:
    """Write ``head_importance.pt`` (scores from ``heads``' importance column) and ``per_sample_ig.pt``."""
    layers = attributed_layers(arrays)
    matrix = score_matrix(heads, "importance")
    n_heads = arrays["ig"].shape[3]
    meta = read_meta(arrays)
    postprocess = str(heads["postprocess"].iloc[0])
    theirs = users_scores(per_sample_scores(arrays), postprocess)
    metadata = json.loads(
        json.dumps(
            {
                "method": meta.get("settings", {}).get("method"),
                "postprocess": postprocess,
                "ig_postprocess": postprocess,
                "importance_scores_convention": USERS_CONVENTION,
                "headattr_importance_convention": HEADATTR_CONVENTION,
                "layer_range": [layers[0], layers[-1]],
                "n_samples": int(arrays["ig"].shape[0]),
                "sample_ids": [str(s) for s in arrays["sample_ids"]],
                "mask_probs": [float(p) for p in arrays["mask_probs"]],
                **meta,
            },
            default=str,
        )
    )
    _save(
        importance_out,
        {
            "importance_scores": _by_layer(theirs, layers),
            "metadata": metadata,
            "headattr_importance": _by_layer(matrix, layers),
        },
    )
    per_sample = per_sample_scores(arrays)[:, layers].reshape(arrays["ig"].shape[0], -1)
    _save(
        per_sample_out,
        {
            "per_sample_ig": torch.tensor(per_sample, dtype=torch.float32),
            "note": NOTE.format(layers=f"{layers[0]}..{layers[-1]}", n_heads=n_heads),
        },
    )
    return {"layers": len(layers), "n_samples": int(per_sample.shape[0])}


def _problem(exc: Exception, path) -> str:
    """What is wrong with the file, without torch's advice to retry with ``weights_only=False`` (which would run
    any code the file carries): the object the file needs that is not a tensor or plain container."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return (
            f"it holds a Python object ({found.group(1)}), not only tensors, numbers, strings, lists and dicts; "
            "save importance_scores as float tensors"
        )
    if not zipfile.is_zipfile(path):
        return f"not a torch file or truncated ({type(exc).__name__})"
    return "it holds Python objects other than tensors and plain containers"


def load_importance_file(path, n_layers: int | None = None, n_heads: int | None = None, key: str = "") -> np.ndarray:
    """Importance [n_layers, n_heads] (NaN for layers the file lacks) from a users' ``head_importance.pt``.

    Loaded with ``weights_only=True``; raises :class:`ConfigError` naming ``key`` and the file when it cannot be
    read safely, is not ``{"importance_scores": {layer: tensor[n_heads]}}``, or does not fit the model shape."""
    where = f"{key}: {path}" if key else str(path)
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, missing or truncated files
        raise ConfigError(
            f"{where}: cannot be read safely with torch.load(weights_only=True): {_problem(exc, path)}"
        ) from exc
    scores = data.get("importance_scores") if isinstance(data, dict) else None
    if not isinstance(scores, dict) or not scores:
        raise ConfigError(f"{where}: not a head_importance file (need a dict 'importance_scores': {{layer: tensor}})")
    ours = data.get("headattr_importance")
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    sign = 1.0
    if isinstance(ours, dict) and ours:
        scores = ours
    elif metadata.get("ig_postprocess") in NEGATED:
        sign = -1.0
    rows = {}
    for layer, value in scores.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 1 or not value.dtype.is_floating_point:
            raise ConfigError(f"{where}: importance_scores[{layer!r}] is not a 1-D float tensor")
        try:
            rows[int(layer)] = sign * value.double().numpy()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: importance_scores key {layer!r} is not a layer index") from exc
    widths = {len(v) for v in rows.values()}
    n_heads = n_heads if n_heads is not None else max(widths)
    n_layers = n_layers if n_layers is not None else max(rows) + 1
    if widths != {n_heads}:
        raise ConfigError(f"{where}: has {sorted(widths)} heads per layer, the model has {n_heads}")
    bad = sorted(x for x in rows if not 0 <= x < n_layers)
    if bad:
        raise ConfigError(f"{where}: layers {bad} are outside the model's 0..{n_layers - 1}")
    out = np.full((n_layers, n_heads), np.nan)
    for layer, value in rows.items():
        if not np.isfinite(value).all():
            raise ConfigError(f"{where}: importance_scores[{layer}] has non-finite values")
        out[layer] = value
    return out


def check_importance_files(files: dict, model_path) -> None:
    """Check every ``compare.importance_files`` entry before any rule runs (each must cover every layer)."""
    shape = model_shape(model_path)
    for name, path in files.items():
        key = f"compare.importance_files.{name}"
        if not Path(path).is_file():
            raise ConfigError(f"{key}: file {path!r} does not exist")
        matrix = load_importance_file(path, *(shape or (None, None)), key=key)
        missing = np.flatnonzero(np.isnan(matrix).all(1))
        if missing.size:
            raise ConfigError(f"{key}: {path} has no scores for layers {missing.tolist()} (pruning needs every layer)")
