"""The per-sample dump: one ``.npz`` file readable with numpy alone (no pickle), written atomically.

Arrays (N samples, P mask probabilities, L layers, H heads, Q paths: L for per_layer, 1 for joint):
- ``ig``          float32 [N, P, L, H]  raw IG of the loss (negative = the head lowers the loss)
- ``loss_full``   float64 [N, P]        L(all gates on)
- ``loss_base``   float64 [N, P, Q]     L(path start): layer q at the baseline (per_layer) / all at baseline
- ``ig_sum``      float64 [N, P, Q]     sum of the path's IG
- ``gap``         float64 [N, P, Q]     ig_sum - (loss_full - loss_base): the completeness gap
- ``n_scored``    int64   [N, P]        scored (masked) tokens
- ``sample_ids``, ``categories``  str [N];  ``mask_probs`` float64 [P];  ``path_names`` str [Q]
- ``meta_json``   str scalar            the exact settings, as JSON (``json.loads(str(d["meta_json"]))``)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DumpError

REQUIRED = ("ig", "loss_full", "loss_base", "ig_sum", "gap", "n_scored", "sample_ids", "mask_probs", "meta_json")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a partial file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy (no pickle), atomically."""

    def save(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, save)


def save_npz(path: str | Path, arrays: dict, meta: dict | None = None) -> None:
    """Atomically save ``arrays`` (and ``meta`` as ``meta_json``) to an uncompressed ``.npz``."""
    payload = dict(arrays)
    if meta is not None:
        payload["meta_json"] = np.array(json.dumps(meta, sort_keys=True, default=str))

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)

    atomic_write(path, write)


def load_npz(path: str | Path, required=()) -> dict:
    """Load every array of an ``.npz`` without pickle; raise :class:`DumpError` if unreadable or incomplete."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DumpError(f"{path}: unreadable or truncated dump ({exc})") from exc
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise DumpError(f"{path}: unreadable or truncated dump ({exc})") from exc
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DumpError(f"{path}: not a headattr dump (missing {missing})")
    return arrays


def read_meta(arrays: dict) -> dict:
    return json.loads(str(arrays["meta_json"])) if "meta_json" in arrays else {}


def load_dump(path: str | Path, expect: dict | None = None) -> dict:
    """Load a dump; with ``expect``, check that those settings match the dump's (e.g. from another config)."""
    arrays = load_npz(path, REQUIRED)
    meta = read_meta(arrays)
    for key, value in (expect or {}).items():
        if meta.get("settings", {}).get(key) != value:
            raise DumpError(
                f"{path}: dump was written with {key}={meta.get('settings', {}).get(key)!r}, expected {value!r}"
            )
    n, p, layers, heads = arrays["ig"].shape
    if arrays["loss_full"].shape != (n, p) or arrays["sample_ids"].shape != (n,):
        raise DumpError(f"{path}: inconsistent array shapes")
    return arrays
