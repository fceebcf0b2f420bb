"""Where the time of one STP attribution goes: a per-phase CPU profile of the engine (and of the users' loop).

    python bench/profile_stp.py --size minilm --method stp --threads 1

Runs one sample of :func:`headattr.methods.ig.integrated_gradients` on STP paths (``riemann_stieltjes``, the
bench's settings: 4 steps, 2 paths, mask probabilities 0.15 and 0.5) under ``torch.profiler`` and splits the
operator time by phase: the prefix-capture pass (:meth:`GateEngine._ensure_prefix`), the gate hooks
(:class:`headattr.models.gates.HeadGates`), the vocabulary head at the scored positions, the rest of the forward,
the backward (operators under autograd's engine), and Python / dispatch overhead = wall - operator time (all
wall clock: on a loaded machine every phase stretches alike, so read the shares). The users' loop
(bench_ig.plain_stp) is profiled the same way. The phases are operator self times summed over the tree under
each marker, so they add up to the operator total. A second block splits the operator time into the matrix
products (and fused attention kernels: the work the FLOP counts count) and every other operator, the largest named.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headattr.engine import gate_engine  # noqa: E402
from headattr.models import gates as gates_module  # noqa: E402

PHASES = ("prefix capture", "gate hooks", "vocabulary head", "forward (rest)", "backward")
# the operators that do the FLOPs the cost model counts (matrix products; the fused attention kernels)
MATRIX_PRODUCTS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ig", ROOT / "bench" / "bench_ig.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def marked(adapter):
    """Markers (record_function) around the prefix capture, every gate hook and the vocabulary head."""
    original_prefix, original_hook = gate_engine.GateEngine._ensure_prefix, gates_module.HeadGates._make_hook

    def prefix(self, *args, **kwargs):
        with record_function("phase: prefix capture"):
            return original_prefix(self, *args, **kwargs)

    def make_hook(self, layer):
        hook = original_hook(self, layer)

        def timed_hook(module, args):
            with record_function("phase: gate hooks"):
                return hook(module, args)

        return timed_hook

    head, open_marks, handles = adapter.head_module, [], []
    if head is not None:

        def enter(module, args):
            open_marks.append(record_function("phase: vocabulary head").__enter__())

        def leave(module, args, out):
            open_marks.pop().__exit__(None, None, None)

        handles = [head.register_forward_pre_hook(enter), head.register_forward_hook(leave)]
    gate_engine.GateEngine._ensure_prefix, gates_module.HeadGates._make_hook = prefix, make_hook
    try:
        yield
    finally:
        gate_engine.GateEngine._ensure_prefix, gates_module.HeadGates._make_hook = original_prefix, original_hook
        for handle in handles:
            handle.remove()


def phase_of(event) -> str:
    """The phase of one profiled operator: the innermost marker above it, backward if under autograd's engine."""
    node = event
    while node is not None:
        name = node.name
        if name.startswith("phase: "):
            return name[len("phase: ") :]
        if name.startswith("autograd::engine::evaluate_function"):
            return "backward"
        node = node.cpu_parent
    return "forward (rest)"


def split(prof, wall: float) -> dict[str, float]:
    """Seconds per phase (operator self time) and Python / dispatch overhead (wall minus operator time)."""
    out = dict.fromkeys(PHASES, 0.0)
    for event in prof.events():
        if event.name.startswith(("phase: ", "autograd::engine::evaluate_function")):
            continue
        out[phase_of(event)] = out.get(phase_of(event), 0.0) + event.self_cpu_time_total / 1e6
    out["Python / dispatch overhead"] = wall - sum(out.values())
    return out


def by_operator(prof) -> tuple[float, dict[str, float]]:
    """(self seconds of the matrix products, self seconds of every other operator by name): how much of the
    operator time is the GEMM work the FLOP counts count, and what the rest is."""
    gemm, other = 0.0, {}
    for event in prof.events():
        if event.name.startswith(("phase: ", "autograd::engine::evaluate_function")):
            continue
        seconds = event.self_cpu_time_total / 1e6
        if event.name in MATRIX_PRODUCTS:
            gemm += seconds
        else:
            other[event.name] = other.get(event.name, 0.0) + seconds
    return gemm, other


def run_profiled(fn) -> tuple[dict[str, float], float, tuple[float, dict[str, float]]]:
    """(seconds per phase, wall seconds, :func:`by_operator`) of one profiled run of ``fn`` after a warm-up."""
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        cpu = time.perf_counter() - start
    return split(prof, cpu), cpu, by_operator(prof)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="minilm")
    parser.add_argument("--method", choices=["stp", "stp_layer"], default="stp")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--path-samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench = _bench()
    model = bench.build_model(args.size, torch.device("cpu"), torch.float32)
    for param in model.parameters():
        param.requires_grad_(False)
    kind = bench.SIZES[args.size]["kind"]
    adapter = bench.Adapter(model, mask_token_id=min(bench.MASK_ID[kind], model.config.vocab_size - 1))
    s = bench.SIZES[args.size]
    scored = bench.make_scored(adapter, s["seq_len"], model.config.vocab_size, [0.15, 0.5], 1)
    budget = gate_engine.default_memory_budget(torch.device("cpu"))
    nocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    runs = {
        "engine (IG only)": lambda: bench.engine_stp(
            adapter, scored, args.method, args.steps, True, None, budget, args.path_samples, start_losses=False
        ),
        "users' loop": lambda: bench.plain_stp(
            model, adapter, scored, args.method, args.steps, nocast, args.path_samples
        ),
    }
    print(
        f"{args.size} {args.method}: {args.steps} steps, {args.path_samples} paths, p 0.15 / 0.5, 1 sample, "
        f"{torch.get_num_threads()} thread(s); wall seconds per phase (the profiler's operator times are wall times)"
    )
    results = {}
    with marked(adapter):
        for name, fn in runs.items():
            results[name] = run_profiled(fn)
    phases = list(PHASES) + ["Python / dispatch overhead"]
    print(f"{'phase':28s}" + "".join(f"{name:>22s}" for name in results))
    for phase in phases:
        print(
            f"{phase:28s}"
            + "".join(f"{r[0][phase]:16.3f} ({100 * r[0][phase] / r[1]:3.0f}%)" for r in results.values())
        )
    print(f"{'total (profiled)':28s}" + "".join(f"{r[1]:22.3f}" for r in results.values()))
    print("\noperator self time: matrix products and fused attention against the rest")
    for name, (_, wall, (gemm, other)) in results.items():
        top = sorted(other.items(), key=lambda kv: -kv[1])[:6]
        print(
            f"{name}: matrix products {gemm:.3f} s ({100 * gemm / wall:.0f}% of wall), other operators "
            f"{sum(other.values()):.3f} s ({100 * sum(other.values()) / wall:.0f}%): "
            + ", ".join(f"{op.removeprefix('aten::')} {sec:.3f}" for op, sec in top)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
