"""Run one IG attribution over many samples and produce the dump arrays (see :mod:`headattr.pipeline.dumps`).

With ``checkpoint_dir`` every finished sample is saved at once (atomically), and a rerun skips the samples
already there, so a killed job loses at most the sample in flight. A checkpoint is reused only when it was
computed from the same content: token ids, target region, masks, settings and the caller's fingerprint of the
model files (:func:`sample_digest`); anything else is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.samples import Sample
from ..engine.gate_engine import GateEngine
from ..errors import ConfigError
from ..methods.ablation import leave_one_out
from ..methods.adaptive import adaptive_integrated_gradients
from ..methods.first_order import first_order
from ..methods.ig import SampleAttribution, integrated_gradients
from ..methods.paths import MODES, make_paths
from ..methods.quadrature import nodes_and_weights
from ..methods.shapley import shapley_values
from ..methods.stp import MODES as STP_MODES
from ..methods.stp import path_names as stp_path_names
from ..methods.stp import stp_layer_paths, stp_paths
from ..objective.loss import OBJECTIVES, WEIGHTINGS, build_scored_input
from ..objective.masking import MASK_MODES, check_mask_probs, check_mask_samples
from .dumps import load_npz, save_npz

OTHER_METHODS = ("shapley_layer", "shapley_all", "first_order", "leave_one_out")
METHODS = MODES + STP_MODES + OTHER_METHODS
PER_LAYER_METHODS = ("per_layer", "shapley_layer", "leave_one_out", "stp_layer")
STP_DEFAULTS = {"path_samples": 4, "path_seed": None, "stp_rule": "riemann_stieltjes", "stp_levels": 4}
NEW_FIELDS = {"layer_range": None, "mask_samples": 1}  # left out of the settings dict at their defaults


def path_names(method: str, n_layers: int, layers=None, options=None) -> list[str]:
    """Names of a method's completeness paths (Q): one per layer (and STP path), or ``all``."""
    if method in STP_MODES:
        chosen = list(range(n_layers)) if layers is None else list(layers)
        return stp_path_names(method, chosen, {**STP_DEFAULTS, **(options or {})}["path_samples"])
    if method in PER_LAYER_METHODS:
        return [f"L{layer}" for layer in (range(n_layers) if layers is None else layers)]
    return ["all"]


@dataclass
class AttributionSettings:
    """Every setting that determines an attribution's numbers (the dump's ``settings``)."""

    method: str = "per_layer"
    rule: str = "riemann_right"
    steps: int = 8
    baseline: float = 0.0
    layers: list[int] | None = None
    lambdas: list[float] | None = None
    objective: str = "diffusion"
    weighting: str = "mean"
    mask_probs: list[float] = field(default_factory=lambda: [0.15, 0.3, 0.5, 0.7, 0.9])
    mask_mode: str = "bernoulli"
    mask_seed: int = 0
    options: dict = field(default_factory=dict)
    layer_range: list[int] | None = None
    mask_samples: int = 1

    def as_dict(self) -> dict:
        """Every setting, the newer ones only where they differ from their defaults (keeps older digests)."""
        return {k: v for k, v in asdict(self).items() if k not in NEW_FIELDS or v != NEW_FIELDS[k]}

    def attributed_layers(self, n_layers: int) -> list[int] | None:
        """Layers whose heads are gated: ``layers`` within ``layer_range`` (inclusive); None = all."""
        chosen = None if self.layers is None else list(self.layers)
        if self.layer_range is not None:
            start, end = self.layer_range
            if not 0 <= start <= end < n_layers:
                raise ConfigError(f"ig.layers: [{start}, {end}] is not an inclusive range inside 0..{n_layers - 1}")
            chosen = [x for x in (range(n_layers) if chosen is None else chosen) if start <= x <= end]
        return chosen

    def validate(self) -> AttributionSettings:
        """Raise :class:`ConfigError` naming the first bad setting; returns self."""
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r} is not one of {METHODS}")
        nodes_and_weights(self.rule, self.steps)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective.kind: {self.objective!r} is not one of {OBJECTIVES}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"objective.weighting: {self.weighting!r} is not one of {WEIGHTINGS}")
        if self.mask_mode not in MASK_MODES:
            raise ConfigError(f"objective.mask_mode: {self.mask_mode!r} is not one of {MASK_MODES}")
        self.mask_probs = check_mask_probs(self.mask_probs) if self.objective == "diffusion" else [1.0]
        if not float(self.baseline) < 1:
            raise ConfigError(f"ig.baseline: must be below 1, got {self.baseline}")
        check_mask_samples(self.mask_samples)
        if self.layer_range is not None and (len(self.layer_range) != 2 or self.layer_range[0] > self.layer_range[1]):
            raise ConfigError(f"ig.layers: {self.layer_range} must be [start, end] with start <= end")
        if self.layer_range is not None and self.method == "shapley_all":
            raise ConfigError("ig.layers: shapley_all plays every head against every other; it has no layer range")
        return self

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, mininterval=1.0)


def attribute_sample(engine: GateEngine, sample: Sample, masks, settings: AttributionSettings) -> SampleAttribution:
    """IG of one sample under ``settings`` (masks [n_p, pos] or None for the causal objective)."""
    adapter = engine.adapter
    scored = build_scored_input(
        sample,
        masks,
        settings.mask_probs,
        settings.objective,
        settings.weighting,
        adapter.mask_token_id,
        adapter.shift_logits,
        settings.mask_samples if settings.objective == "diffusion" else 1,
    )
    res = _method(engine, scored, settings)
    if settings.objective == "diffusion" and settings.mask_samples > 1:
        res = average_draws(res, settings.mask_samples)
    return res


def _method(engine: GateEngine, scored, settings: AttributionSettings) -> SampleAttribution:
    adapter, opts = engine.adapter, settings.options
    layers = settings.attributed_layers(adapter.n_layers)
    if settings.method in MODES:
        paths = make_paths(
            settings.method,
            adapter.n_layers,
            adapter.n_heads,
            settings.baseline,
            layers if settings.method == "per_layer" else settings.layers,
            settings.lambdas,
        )
        if settings.layer_range is not None and settings.method != "per_layer":
            outside = torch.ones(adapter.n_layers, dtype=torch.bool)
            outside[layers] = False
            paths.start[:, outside] = 1.0  # heads outside the range stay on
        if opts.get("tol") is not None:  # ig.tol: steps raised per path until completeness holds to tol
            return adaptive_integrated_gradients(engine, scored, paths, settings.rule, settings.steps, **opts)
        return integrated_gradients(engine, scored, paths, settings.rule, settings.steps)
    if settings.method in STP_MODES:
        o = {**STP_DEFAULTS, **opts}
        build = stp_paths if settings.method == "stp" else stp_layer_paths
        paths = build(
            adapter.n_layers,
            adapter.n_heads,
            scored.sample_id,
            settings.baseline,
            o["path_samples"],
            settings.mask_seed if o["path_seed"] is None else o["path_seed"],
            layers,
            o["stp_rule"],
            o["stp_levels"],
        )
        return integrated_gradients(engine, scored, paths, o["stp_rule"], settings.steps)
    if settings.method in ("shapley_layer", "shapley_all"):
        scope = "per_layer" if settings.method == "shapley_layer" else "all"
        return shapley_values(engine, scored, scope=scope, layers=layers, **opts)
    if settings.method == "first_order":
        res = first_order(engine, scored, **opts)
    else:
        res = leave_one_out(engine, scored)
    if layers is not None:  # dL/dgate and L(on) - L(off) of a head do not depend on the other gates' ranges
        outside = np.ones(adapter.n_layers, dtype=bool)
        outside[layers] = False
        res.ig[:, outside] = 0.0
        if settings.method == "leave_one_out":  # one completeness record per attributed layer
            res.loss_base, res.ig_sum = res.loss_base[:, layers], res.ig_sum[:, layers]
    return res


def average_draws(res: SampleAttribution, mask_samples: int) -> SampleAttribution:
    """Per-p results from per-(p, s) results: every array over the S draws of a p is averaged (the objective of
    p is the mean of its draws' losses, IG is linear in it, so completeness holds for the averages); n_scored
    is summed."""

    def mean(x):
        x = np.asarray(x)
        return x.reshape(-1, mask_samples, *x.shape[1:]).mean(1).astype(x.dtype)

    return SampleAttribution(
        sample_id=res.sample_id,
        ig=mean(res.ig),
        loss_full=mean(res.loss_full),
        loss_base=mean(res.loss_base),
        ig_sum=mean(res.ig_sum),
        n_scored=res.n_scored.reshape(-1, mask_samples).sum(1),
        extras={k: mean(v) if np.ndim(v) and len(v) == len(res.n_scored) else v for k, v in res.extras.items()},
    )


def sample_digest(sample: Sample, masks, settings: AttributionSettings, fingerprint: str = "") -> str:
    """What a per-sample checkpoint was computed from: ids, target region, masks, settings, model files."""
    digest = hashlib.sha256()
    for part in (
        settings.digest(),
        fingerprint,
        sample.sample_id,
        f"{sample.target_start}:{sample.target_end}",
    ):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(sample.input_ids, dtype=np.int64).tobytes())
    if masks is not None:
        digest.update(np.ascontiguousarray(masks, dtype=bool).tobytes())
    return digest.hexdigest()[:24]


def run_attribution(
    engine: GateEngine,
    samples: list[Sample],
    masks: dict[str, np.ndarray] | None,
    settings: AttributionSettings,
    meta: dict | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    fingerprint: str = "",
    stats: dict | None = None,
) -> tuple[dict, dict]:
    """(arrays, meta) of the dump for ``samples`` in the given order (``fingerprint``: of the model files).

    ``stats`` (a dict, optional) receives ``resumed``: how many samples came from checkpoints (kept out of the
    dump so that a resumed dump is bit-identical to a fresh one)."""
    settings.validate()
    if masks is not None:
        missing = [s.sample_id for s in samples if s.sample_id not in masks]
        if missing:
            raise ConfigError(f"masks: no mask for samples {missing[:5]}")
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    results: list[SampleAttribution] = []
    resumed = 0
    for i, sample in enumerate(_progress(samples, len(samples), f"IG {settings.method}", progress)):
        cached = ckpt / f"{i:06d}.npz" if ckpt else None
        sample_masks = None if settings.objective == "causal" else masks[sample.sample_id]
        digest = sample_digest(sample, sample_masks, settings, fingerprint)
        if cached is not None and cached.exists():
            arr = load_npz(cached)
            if str(arr["sample_id"]) == sample.sample_id and str(arr["digest"]) == digest:
                extras = {k[len("extra_") :]: arr[k] for k in arr if k.startswith("extra_")}
                results.append(SampleAttribution(sample.sample_id, *(arr[k] for k in _FIELDS), extras=extras))
                resumed += 1
                continue
        res = attribute_sample(engine, sample, sample_masks, settings)
        if cached is not None:
            save_npz(
                cached,
                {k: getattr(res, k) for k in _FIELDS}
                | {f"extra_{k}": np.asarray(v) for k, v in res.extras.items()}
                | {"sample_id": np.array(sample.sample_id), "digest": np.array(digest)},
            )
        results.append(res)
    if stats is not None:
        stats["resumed"] = resumed
    if ckpt is not None:
        print(f"resumed {resumed}/{len(samples)} samples from {ckpt}", file=sys.stderr)
    return stack_results(results, samples, settings, engine, meta)


_FIELDS = ("ig", "loss_full", "loss_base", "ig_sum", "n_scored")


def stack_results(results, samples, settings, engine, meta=None) -> tuple[dict, dict]:
    """Per-sample results -> dump arrays and meta."""
    names = path_names(
        settings.method, engine.adapter.n_layers, settings.attributed_layers(engine.adapter.n_layers), settings.options
    )
    n_p, n_q = len(settings.mask_probs), len(names)
    shapes = {
        "ig": (n_p, engine.adapter.n_layers, engine.adapter.n_heads),
        "loss_full": (n_p,),
        "loss_base": (n_p, n_q),
        "ig_sum": (n_p, n_q),
        "n_scored": (n_p,),
    }

    def stack(name, dtype):
        return (
            np.stack([getattr(r, name) for r in results]).astype(dtype)
            if results
            else np.zeros((0, *shapes[name]), dtype)
        )

    arrays = {
        "ig": stack("ig", np.float32),
        "loss_full": stack("loss_full", np.float64),
        "loss_base": stack("loss_base", np.float64),
        "ig_sum": stack("ig_sum", np.float64),
        "n_scored": stack("n_scored", np.int64),
        "sample_ids": np.array([s.sample_id for s in samples], dtype=str),
        "categories": np.array([s.category for s in samples], dtype=str),
        "mask_probs": np.asarray(settings.mask_probs, dtype=np.float64),
        "path_names": np.array(names, dtype=str),
    }
    for key in results[0].extras if results else ():
        arrays[f"extra_{key}"] = np.stack([np.asarray(r.extras[key]) for r in results])
    arrays["gap"] = arrays["ig_sum"] - (arrays["loss_full"][:, :, None] - arrays["loss_base"])
    full_meta = {
        "settings": settings.as_dict(),
        "model": {
            "family": engine.adapter.family,
            "n_layers": engine.adapter.n_layers,
            "n_heads": engine.adapter.n_heads,
            "head_dim": engine.adapter.head_dim,
        },
        "sign": "raw IG of the loss; negative = the head lowers the loss; importance = -ig",
        **(meta or {}),
    }
    return arrays, full_meta
