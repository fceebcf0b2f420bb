"""Command line: run one attribution without the workflow.

    headattr attribute --model resources/demo/model --data demo --max-samples 1 --method per_layer \
        --steps 8 --mask-probs 0.15 0.5 --out out/ig.npz

or ``headattr attribute --config run.yaml`` with the same keys (flags override the file). Before any IG it runs
the workflow's model checks (:func:`headattr.pipeline.checks.check_model_settings`: mask id, positions, objective,
hub ids), with the workflow's messages. Writes the dump (``.npz``, see :mod:`headattr.pipeline.dumps`) and, beside
it, the aggregated tables ``<out>.heads.csv`` and ``<out>.completeness.csv``, the masks it drew ``<out>.masks.npz``
(the workflow's masks.npz format) and the users' files ``<out>.head_importance.pt`` and ``<out>.per_sample_ig.pt``
(:mod:`headattr.pipeline.exports`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .errors import HeadattrError

DEFAULTS = {
    "model": None,
    "adapter": None,
    "mask_token_id": None,
    "dtype": "float32",
    "device": "auto",
    "trust_remote_code": False,
    "data": "demo",
    "max_samples": 1,
    "data_seed": 0,
    "max_len": 256,
    "method": "per_layer",
    "rule": "riemann_right",
    "steps": 8,
    "baseline": 0.0,
    "objective": "diffusion",
    "weighting": "mean",
    "mask_probs": [0.15, 0.3, 0.5, 0.7, 0.9],
    "mask_mode": "bernoulli",
    "mask_seed": 0,
    "rows_per_pass": 16,
    "out": "headattr-ig.npz",
    "path_samples": 4,
    "path_seed": None,
    "stp_rule": "riemann_stieltjes",
    "stp_levels": 4,
    "mask_samples": 1,
    "layers": None,
    "postprocess": "signed",
    "allow_mismatch": False,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headattr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attribute", help="IG over head gates for a few samples")
    att.add_argument("--config", help="YAML file with any of the keys below")
    att.add_argument("--model", help="local path or hub id")
    att.add_argument("--adapter", help="override the auto-detected adapter family")
    att.add_argument("--mask-token-id", type=int)
    att.add_argument("--dtype")
    att.add_argument("--device")
    att.add_argument("--trust-remote-code", action="store_true", default=None)
    att.add_argument("--data", help="'demo', a jsonl/json/parquet/csv file, or hf:NAME")
    att.add_argument("--max-samples", type=int)
    att.add_argument("--data-seed", type=int)
    att.add_argument("--max-len", type=int)
    att.add_argument("--method", choices=["per_layer", "joint", "layered", "stp", "stp_layer"])
    att.add_argument("--rule")
    att.add_argument("--steps", type=int)
    att.add_argument("--baseline", type=float)
    att.add_argument("--objective", choices=["diffusion", "causal"])
    att.add_argument("--weighting", choices=["mean", "inverse_p", "sum"])
    att.add_argument(
        "--allow-mismatch",
        action="store_true",
        default=None,
        help="run an objective that does not fit the architecture (objective.allow_mismatch)",
    )
    att.add_argument("--mask-samples", type=int, help="masks per mask probability (S)")
    att.add_argument("--path-samples", type=int, help="STP paths per sample")
    att.add_argument("--path-seed", type=int, help="STP threshold seed (default: --mask-seed)")
    att.add_argument("--stp-rule", choices=["riemann_stieltjes", "trapezoid_stieltjes", "gauss_segments"])
    att.add_argument("--stp-levels", type=int)
    att.add_argument("--layers", type=int, nargs=2, metavar=("START", "END"), help="inclusive layer range")
    att.add_argument("--postprocess", choices=["signed", "abs", "relu"], help="importance in <out>.heads.csv")
    att.add_argument("--mask-probs", type=float, nargs="+")
    att.add_argument("--mask-mode", choices=["bernoulli", "exact"])
    att.add_argument("--mask-seed", type=int)
    att.add_argument("--rows-per-pass", type=int)
    att.add_argument("--out")
    est = sub.add_parser("estimate", help="row-passes, FLOPs and expected wall time of an IG run (no model weights)")
    est.add_argument("--model", required=True, help="local path or hub id (only its config is read)")
    est.add_argument("--seq-len", type=int, required=True)
    est.add_argument("--samples", type=int, default=1)
    est.add_argument("--mask-probs", type=int, default=5, help="number of mask probabilities")
    est.add_argument("--steps", type=int, default=8)
    est.add_argument("--method", choices=["per_layer", "joint", "layered"], default="per_layer")
    est.add_argument("--rule", default="riemann_right", help="quadrature rule")
    est.add_argument("--device-class", help="one of the cost table's classes (default: all)")
    est.add_argument("--dtype", default="bfloat16", help="weights dtype, for the memory estimate")
    est.add_argument("--no-prefix-cache", action="store_true")
    est.add_argument("--trust-remote-code", action="store_true")
    return parser


def run_estimate(args: argparse.Namespace) -> str:
    """Print (and return) :func:`headattr.engine.cost.format_estimate` for the model config at ``args.model``."""
    from .engine.cost import DEVICE_FLOPS, ModelDims, activation_bytes, estimate, format_estimate
    from .models.loading import load_config, resolve_dtype

    if args.device_class and args.device_class not in DEVICE_FLOPS:
        raise HeadattrError(f"--device-class: {args.device_class!r} is not one of {sorted(DEVICE_FLOPS)}")
    config = load_config(args.model, args.trust_remote_code)
    try:
        dims = ModelDims.from_config(config, resolve_dtype(args.dtype).itemsize)
    except ValueError as exc:
        raise HeadattrError(f"--model {args.model}: {exc}") from exc
    est = estimate(
        dims,
        args.seq_len,
        args.samples,
        args.mask_probs,
        args.steps,
        args.method,
        not args.no_prefix_cache,
        args.device_class,
        args.rule,
    )
    mib = activation_bytes(dims, args.seq_len, dims.n_layers, args.seq_len // 2, fused_attention=True) / 2**20
    text = format_estimate(est) + f"\n  activation memory: ~{mib:,.0f} MiB per row through all layers (fused attention)"
    print(text)
    return text


def resolve_options(args: argparse.Namespace) -> dict:
    """Defaults, then the YAML file, then flags."""
    options = dict(DEFAULTS)
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise HeadattrError(f"{args.config}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
        options.update(loaded)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    if not options["model"]:
        raise HeadattrError("--model (or 'model' in --config) is required")
    return options


def output_paths(out: Path) -> dict[str, Path]:
    """The files the CLI writes beside its dump ``out``."""
    return {
        name: out.with_suffix(suffix)
        for name, suffix in (
            ("heads", ".heads.csv"),
            ("completeness", ".completeness.csv"),
            ("masks", ".masks.npz"),
            ("head_importance", ".head_importance.pt"),
            ("per_sample_ig", ".per_sample_ig.pt"),
        )
    }


def workflow_config(options: dict) -> dict:
    """The CLI options as the workflow config sections its model checks read (model, data, objective)."""
    return {
        "model": {
            "path": options["model"],
            **{k: options[k] for k in ("dtype", "device", "trust_remote_code", "adapter", "mask_token_id")},
        },
        "data": {"max_len": options["max_len"], "chat_template": False},
        "objective": {"kind": options["objective"], "allow_mismatch": bool(options["allow_mismatch"])},
    }


def run_attribute(options: dict) -> Path:
    from .data.sources import read_table, sample_records, to_records
    from .data.tokenize import tokenize_records
    from .engine.gate_engine import GateEngine
    from .models.loading import load_adapter
    from .objective.masking import draw_masks
    from .pipeline.attribute import AttributionSettings, run_attribution
    from .pipeline.checks import check_model_settings
    from .pipeline.dumps import save_npz
    from .pipeline.stages import aggregate_dump, save_masks

    settings = AttributionSettings(
        method=options["method"],
        rule=options["rule"],
        steps=options["steps"],
        baseline=options["baseline"],
        objective=options["objective"],
        weighting=options["weighting"],
        mask_probs=options["mask_probs"],
        mask_mode=options["mask_mode"],
        mask_seed=options["mask_seed"],
        options={k: options[k] for k in ("path_samples", "path_seed", "stp_rule", "stp_levels")}
        if options["method"] in ("stp", "stp_layer")
        else {},
        layer_range=None if options["layers"] is None else list(options["layers"]),
        mask_samples=options["mask_samples"],
    ).validate()
    config = workflow_config(options)
    check_model_settings(config)
    records = sample_records(to_records(read_table(options["data"])), options["max_samples"], options["data_seed"])
    _, tokenizer, adapter = load_adapter(config["model"])
    samples, report = tokenize_records(records, tokenizer, options["max_len"], shift=adapter.shift_logits)
    out = Path(options["out"])
    files = output_paths(out)
    masks = None
    if settings.objective == "diffusion":
        masks = draw_masks(
            samples,
            settings.mask_probs,
            settings.mask_mode,
            settings.mask_seed,
            adapter.shift_logits,
            settings.mask_samples,
        )
        save_masks(
            files["masks"],
            samples,
            masks,
            settings.mask_probs,
            settings.mask_mode,
            settings.mask_seed,
            adapter.shift_logits,
            settings.mask_samples,
        )
    engine = GateEngine(adapter, rows_per_pass=options["rows_per_pass"])
    arrays, meta = run_attribution(
        engine, samples, masks, settings, {"cli_options": options, "tokenize": report.as_dict()}
    )
    save_npz(out, arrays, meta)
    gaps = aggregate_dump(
        out,
        files["heads"],
        files["completeness"],
        (files["head_importance"], files["per_sample_ig"]),
        options["postprocess"],
    )
    print(
        f"wrote {out} ({len(samples)} samples) and {', '.join(p.name for p in files.values() if p.exists())}; "
        f"completeness gap max {gaps['gap_abs_max']:.3g} (relative {gaps['gap_rel_max']:.3g})",
        file=sys.stderr,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "attribute":
            run_attribute(resolve_options(args))
        elif args.command == "estimate":
            run_estimate(args)
    except HeadattrError as exc:
        print(f"headattr: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
