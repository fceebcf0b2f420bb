"""Run one IG attribution over many samples and produce the dump arrays (see :mod:`headattr.dumps`).

With ``checkpoint_dir`` every finished sample is saved at once (atomically), and a rerun skips the samples
already there, so a killed job loses at most the sample in flight.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data.samples import Sample
from .dumps import load_npz, save_npz
from .engine import GateEngine
from .errors import ConfigError
from .methods.ablation import leave_one_out
from .methods.adaptive import adaptive_integrated_gradients
from .methods.first_order import first_order
from .methods.ig import SampleAttribution, integrated_gradients
from .methods.paths import MODES, make_paths
from .methods.quadrature import nodes_and_weights
from .methods.shapley import shapley_values
from .objective.loss import OBJECTIVES, WEIGHTINGS, build_scored_input
from .objective.masking import MASK_MODES, check_mask_probs

OTHER_METHODS = ("shapley_layer", "shapley_all", "first_order", "leave_one_out")
METHODS = MODES + OTHER_METHODS
PER_LAYER_METHODS = ("per_layer", "shapley_layer", "leave_one_out")


def path_names(method: str, n_layers: int, layers=None) -> list[str]:
    """Names of a method's completeness paths (Q): one per layer, or ``all``."""
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
        return self

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


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
    )
    opts = settings.options
    if settings.method in MODES:
        paths = make_paths(
            settings.method, adapter.n_layers, adapter.n_heads, settings.baseline, settings.layers, settings.lambdas
        )
        if opts.get("tol") is not None:  # ig.tol: steps raised per path until completeness holds to tol
            return adaptive_integrated_gradients(engine, scored, paths, settings.rule, settings.steps, **opts)
        return integrated_gradients(engine, scored, paths, settings.rule, settings.steps)
    if settings.method in ("shapley_layer", "shapley_all"):
        scope = "per_layer" if settings.method == "shapley_layer" else "all"
        return shapley_values(engine, scored, scope=scope, layers=settings.layers, **opts)
    if settings.method == "first_order":
        return first_order(engine, scored, **opts)
    return leave_one_out(engine, scored)


def run_attribution(
    engine: GateEngine,
    samples: list[Sample],
    masks: dict[str, np.ndarray] | None,
    settings: AttributionSettings,
    meta: dict | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict, dict]:
    """(arrays, meta) of the dump for ``samples`` in the given order."""
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
        if cached is not None and cached.exists():
            arr = load_npz(cached)
            if str(arr["sample_id"]) == sample.sample_id and str(arr["digest"]) == settings.digest():
                extras = {k[len("extra_") :]: arr[k] for k in arr if k.startswith("extra_")}
                results.append(SampleAttribution(sample.sample_id, *(arr[k] for k in _FIELDS), extras=extras))
                resumed += 1
                continue
        sample_masks = None if settings.objective == "causal" else masks[sample.sample_id]
        res = attribute_sample(engine, sample, sample_masks, settings)
        if cached is not None:
            save_npz(
                cached,
                {k: getattr(res, k) for k in _FIELDS}
                | {f"extra_{k}": np.asarray(v) for k, v in res.extras.items()}
                | {"sample_id": np.array(sample.sample_id), "digest": np.array(settings.digest())},
            )
        results.append(res)
    if ckpt is not None:
        print(f"resumed {resumed}/{len(samples)} samples from {ckpt}", file=sys.stderr)
    return stack_results(results, samples, settings, engine, meta)


_FIELDS = ("ig", "loss_full", "loss_base", "ig_sum", "n_scored")


def stack_results(results, samples, settings, engine, meta=None) -> tuple[dict, dict]:
    """Per-sample results -> dump arrays and meta."""
    names = path_names(settings.method, engine.adapter.n_layers, settings.layers)
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
        "settings": asdict(settings),
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
