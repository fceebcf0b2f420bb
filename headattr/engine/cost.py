"""What an IG run costs: row-passes, FLOPs, activation memory and wall time, from the model config alone.

FLOP model (one row = one sequence of T tokens; d hidden, I intermediate, V vocab, S scored positions):
- layer forward:   2 * P_layer * T + 4 * T^2 * d, with P_layer = 2 d^2 + 2 d d_kv + (3 if gated MLP else 2) d I
  (matmul parameters: q, o, k, v, MLP; 4 T^2 d is QK^T plus attention-weighted V, no causal halving),
- head forward:    2 * d * V * S (logits only at scored positions; S = T for full logits),
- backward:        matmuls 1x their forward when parameters are frozen (only input gradients), 2x with parameter
  gradients; attention 2x its forward either way. The backward of a row stops at the lowest layer whose gates
  require grad (with prefix caching: the moving layer l, whose q/k/v/attention need no backward at all).

Row-passes of one sample with n_p mask probabilities, m steps, L layers (see :func:`ig_cost`):
- joint / layered: n_p * m gradient rows through L layers, plus 2 n_p loss rows (all on, baseline),
- per_layer:       n_p * m rows per layer l; uncached each runs L layers, prefix-cached it runs L - l layers
  (n_p * m * L (L + 1) / 2 layer-passes instead of n_p * m * L^2), plus one no-grad prefix pass of n_p rows,
  and n_p baseline rows per layer.
Rows shared by paths run once: with a node at t = 1 (riemann_right, trapezoid) the L per-layer rows there are one
"all on" row per p (through all L layers), which also gives L(all on); a node at t = 0 gives L(path start).

Memory of the engine's passes (:func:`activation_bytes`, what rows per pass are chosen from; measured against it
on LLaDA-8B-shaped slices by bench/memory_slice.py, docs/performance-8b.md): parameters are frozen, so autograd
keeps no linear layer's input, only what the gradients w.r.t. the gates need. Per row, b bytes per model value,
fp32 (4 bytes) where the model upcasts:
- a layer above the row's first: 3 T I b (the gated MLP's gate, its activation, up) + 3 T d 4 (two RMSNorm
  inputs and the gated z, all fp32) + attention: q, k, v and the probabilities H T^2 (fp32, plus their b-byte copy
  when b < 4) for a materialising kernel (eager; SDPA's math kernel), or q, k, v, out and an fp32 logsumexp
  H T for a fused one (flash / memory-efficient; PyTorch's CPU SDPA kernel is one);
- the row's first layer (its input is a constant: embeddings or cached prefix states): only 3 T I b + 2 T d 4;
- the head: the final norm's fp32 input, the S x V logits (b bytes, held for the accuracy) and the fp32 copy with
  the target masked out that the log-sum-exp keeps (:func:`headattr.objective.loss.token_cross_entropy`);
- the peak is what the layers keep plus the larger of two phases of the backward: the head's (its activations and
  one S x V fp32 temporary, the log-sum-exp's exponentials: the loss's backward runs in place on the copy it keeps,
  plus the gradient's b-byte cast when b < 4), then a layer's (the logits still held, and the layer's transient:
  the larger of its forward, two H T^2 b-byte score tensors of a materialising kernel and one T I b product, and
  its backward, three T I b gradients and, materialising, two H T^2 fp32 gradients).
With activation checkpointing a checkpointed layer keeps only its input (T d b) until its recomputation in the
backward, whose activations join that layer's phase. :func:`row_bytes` is the cruder upper bound of a plain loop
(full logits, parameter gradients) that bench/bench_ig.py sizes its reference runs with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Sustained FLOP/s assumed per device class: ~40% of dense bf16 peak on GPUs (hooks, small matmuls, attention
# and the backward keep real runs well below peak); for 2 CPU cores (fp32) the rate fitted with the per-call
# overhead below by bench/calibrate_cost.py on this shared VM at load average 8-10 (two runs, 2.44e9 and
# 2.48e9; bare matmuls on an idle machine reach ~20-60 GFLOP/s, IG jobs do not).
DEVICE_FLOPS = {
    "cpu-2core": 2.5e9,
    "a100": 0.4 * 312e12,
    "h100": 0.4 * 989e12,
    "h200": 0.4 * 989e12,
}
# Fixed seconds per layer execution of one model call (forward, or backward), whatever its rows: Python hooks,
# gates and op dispatch of a transformer layer. Fitted for cpu-2core by bench/calibrate_cost.py (28 and 38 ms in
# two runs at load average 8-10; docs/performance.md gives the estimate's error); not measured on GPUs (their
# estimate is FLOPs only).
LAYER_CALL_SECONDS = {"cpu-2core": 0.033}
GATED_MLP_TYPES = {"llama", "qwen2", "mistral", "llada", "dream"}
METHODS = ("per_layer", "joint", "layered")


def _first_int(config, *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


@dataclass(frozen=True)
class ModelDims:
    """The dimensions that set an IG run's cost."""

    n_layers: int
    n_heads: int
    hidden: int
    intermediate: int
    vocab: int
    n_kv_heads: int | None = None
    gated_mlp: bool = False
    dtype_bytes: int = 4

    @classmethod
    def from_config(cls, config, dtype_bytes: int = 4) -> ModelDims:
        """Dims from a transformers (or LLaDA/Dream) config; raises ValueError when one is missing."""
        hidden = _first_int(config, "hidden_size", "n_embd", "dim", "d_model")
        n_layers = _first_int(config, "num_hidden_layers", "n_layer", "n_layers")
        n_heads = _first_int(config, "num_attention_heads", "n_head", "n_heads")
        vocab = _first_int(config, "vocab_size", "embedding_size")
        missing = [
            k for k, v in {"hidden": hidden, "layers": n_layers, "heads": n_heads, "vocab": vocab}.items() if not v
        ]
        if missing:
            raise ValueError(f"config lacks {missing} for a cost estimate")
        intermediate = _first_int(config, "intermediate_size", "n_inner", "hidden_dim", "mlp_hidden_size")
        model_type = str(getattr(config, "model_type", "")).lower()
        return cls(
            n_layers=n_layers,
            n_heads=n_heads,
            hidden=hidden,
            intermediate=intermediate or 4 * hidden,
            vocab=vocab,
            n_kv_heads=_first_int(config, "num_key_value_heads", "n_kv_heads", default=n_heads),
            gated_mlp=model_type in GATED_MLP_TYPES,
            dtype_bytes=dtype_bytes,
        )

    @property
    def kv_width(self) -> int:
        return self.hidden * (self.n_kv_heads or self.n_heads) // self.n_heads

    @property
    def qkv_params(self) -> int:
        return self.hidden * self.hidden + 2 * self.hidden * self.kv_width

    @property
    def layer_params(self) -> int:
        """Matmul parameters of one layer (biases and norms ignored)."""
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return self.qkv_params + self.hidden * self.hidden + mlp


def dims_from_model(model) -> ModelDims:
    """:class:`ModelDims` of a loaded model (its config and parameter dtype)."""
    param = next(model.parameters())
    return ModelDims.from_config(getattr(model, "config", None), param.element_size())


@dataclass(frozen=True)
class RowCost:
    """FLOPs of one row: forward and backward of the layers it runs and of the head."""

    forward: float
    backward: float


def row_flops(
    dims: ModelDims,
    seq_len: int,
    layers_run: int,
    n_scored: float,
    grad: bool,
    param_grads: bool = False,
    backward_layers: float | None = None,
) -> RowCost:
    """FLOPs of one row running ``layers_run`` layers; ``backward_layers`` (default all run) get a backward."""
    t, d = seq_len, dims.hidden
    linear = 2.0 * dims.layer_params * t
    attention = 4.0 * t * t * d
    head = 2.0 * d * dims.vocab * n_scored
    forward = layers_run * (linear + attention) + head
    if not grad:
        return RowCost(forward, 0.0)
    lin_factor = 2.0 if param_grads else 1.0
    n_back = layers_run if backward_layers is None else backward_layers
    backward = n_back * (lin_factor * linear + 2.0 * attention) + lin_factor * head
    return RowCost(forward, backward)


def attention_part(dims: ModelDims, seq_len: int) -> float:
    """Forward FLOPs of one layer's q/k/v projections and attention for one row (what attention replay skips)."""
    return dims.qkv_params * 2.0 * seq_len + 4.0 * seq_len**2 * dims.hidden


def backward_tail(dims: ModelDims, seq_len: int) -> float:
    """Share of a row's lowest layer that needs a backward: its q/k/v and attention do not (nothing below them
    requires grad: embeddings and parameters are frozen, cached hidden states are constants)."""
    return 1.0 - attention_part(dims, seq_len) / (2.0 * dims.layer_params * seq_len + 4.0 * seq_len**2 * dims.hidden)


@dataclass
class PassCounts:
    """What an engine actually ran (see :meth:`add`): row-passes, layer-passes, forward passes and FLOPs.

    ``grad_rows`` ran forward and backward, ``loss_rows`` forward only (prefix-capture rows included, as in
    :func:`ig_cost`); ``layer_forwards`` / ``layer_backwards`` count one per row and transformer layer it ran
    forward / backward (a gradient row backpropagates through every layer it ran, down to its lowest, whose
    q/k/v and attention FLOPs are not counted); ``passes`` is the number of model calls (chunks),
    ``layer_calls`` the layers those calls ran, twice for calls with a backward (the unit of per-operation
    overhead, see :data:`LAYER_CALL_SECONDS`); FLOPs follow :func:`row_flops` for each chunk's rows, length and
    scored positions (NaN without model dims).
    """

    grad_rows: int = 0
    loss_rows: int = 0
    layer_forwards: int = 0
    layer_backwards: int = 0
    passes: int = 0
    layer_calls: int = 0
    flops_forward: float = 0.0
    flops_backward: float = 0.0

    def add(
        self,
        dims: ModelDims | None,
        seq_len: int,
        rows: int,
        layers: int,
        n_scored: float,
        grad: bool,
        replayed: bool = False,
        extra_forward: float = 0.0,
        param_grads: bool = False,
    ) -> None:
        """Count one model call of ``rows`` rows of ``seq_len`` tokens through ``layers`` layers, ``n_scored``
        scored positions in all (logits computed there); ``replayed``: its first layer's attention came from the
        prefix cache; ``extra_forward``: FLOPs on top (a capture pass's last attention); ``param_grads``: the
        backward also computes parameter gradients (a plain loop's, not the engine's), so it runs every layer
        whole."""
        self.passes += 1
        self.layer_calls += layers * (2 if grad else 1)
        self.grad_rows += rows if grad else 0
        self.loss_rows += 0 if grad else rows
        self.layer_forwards += rows * layers
        self.layer_backwards += rows * layers if grad else 0
        if dims is None:
            self.flops_forward = self.flops_backward = float("nan")
            return
        back = layers - 1 + backward_tail(dims, seq_len) if layers and not param_grads else None
        cost = row_flops(dims, seq_len, layers, n_scored / max(rows, 1), grad, param_grads, back)
        skipped = attention_part(dims, seq_len) if replayed else 0.0
        self.flops_forward += rows * (cost.forward - skipped) + extra_forward
        self.flops_backward += rows * cost.backward

    @property
    def flops(self) -> float:
        return self.flops_forward + self.flops_backward

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"flops": self.flops}


def ig_cost(
    dims: ModelDims,
    seq_len: int,
    n_samples: int,
    n_p: int,
    steps: int,
    method: str = "per_layer",
    prefix_cache: bool = True,
    scored_fraction: float = 0.5,
    param_grads: bool = False,
    full_logits: bool = False,
    end_losses: bool = True,
    rule: str = "riemann_right",
    shared_rows: bool = True,
    attention_cache: bool = True,
    rows_per_pass: int = 16,
) -> dict:
    """Row-passes and FLOPs of an IG run (see the module docstring for the model), counted with
    :meth:`PassCounts.add` call by call as the engine chunks its rows (``rows_per_pass``), so the estimate and the
    engine's own :attr:`~headattr.engine.gate_engine.GateEngine.counts` use one definition of every count.

    ``scored_fraction`` is the mean share of positions scored (the mean mask probability); ``full_logits``,
    ``param_grads``, ``end_losses=False`` and ``shared_rows=False`` describe a plain loop that computes every
    logit, parameter gradients, no path-end losses and every row even when paths share it. With ``shared_rows``
    a node at t = 1 ("all on", shared by every per-layer path) runs once per p from layer 0 and provides
    L(all on); a node at t = 0 provides L(path start). With ``attention_cache`` (and prefix caching) a row starting
    at layer l > 0 replays that layer's q/k/v projections and attention from the prefix pass, which runs them for
    the last layer too.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    n_layers = dims.n_layers
    s = seq_len if full_logits else scored_fraction * seq_len
    replay = bool(attention_cache and prefix_cache and method == "per_layer")
    counts = PassCounts()

    def add(rows: int, layers: int, grad: bool, replayed: bool = False, scored: float = s, extra: float = 0.0):
        """Count ``rows`` rows as the engine runs them: model calls of at most ``rows_per_pass`` rows."""
        for lo in range(0, rows, rows_per_pass):
            n = min(rows_per_pass, rows - lo)
            counts.add(dims, seq_len, n, layers, scored * n, grad, replayed, extra * n, param_grads)

    at_one = int(shared_rows and rule in ("riemann_right", "trapezoid"))  # a node at t = 1
    at_zero = int(shared_rows and rule in ("riemann_left", "trapezoid"))  # a node at t = 0
    if method != "per_layer":
        add(n_p * steps, n_layers, True)
        if end_losses:
            add(n_p * (2 - at_one - at_zero), n_layers, False)
    elif prefix_cache:
        for layer in range(n_layers):
            replayed = replay and layer > 0
            add(n_p * (steps - at_one), n_layers - layer, True, replayed)
            if end_losses:
                add(n_p * (1 - at_zero), n_layers - layer, False, replayed)
        add(n_p * at_one, n_layers, True)
        if end_losses:
            add(n_p * (1 - at_one), n_layers, False)
        if n_layers > 1:  # the capture pass: all on through L - 1 layers, plus the last layer's attention
            add(n_p, n_layers - 1, False, scored=0.0, extra=attention_part(dims, seq_len) if replay else 0.0)
    else:  # every path's rows run from layer 0, one group per path (as the engine chunks them)
        for _ in range(n_layers):
            add(n_p * (steps - at_one), n_layers, True)
            if end_losses:
                add(n_p * (1 - at_zero), n_layers, False)
        add(n_p * at_one, n_layers, True)
        if end_losses:
            add(n_p * (1 - at_one), n_layers, False)
    totals = {name: value * n_samples for name, value in counts.as_dict().items()}
    return {
        "method": method,
        "prefix_cache": bool(prefix_cache and method == "per_layer"),
        "seq_len": seq_len,
        "n_samples": n_samples,
        "n_p": n_p,
        "steps": steps,
        "rule": rule,
        **totals,
        "dims": asdict(dims),
    }


def device_name(device) -> str:
    """``cuda:0 (NVIDIA H200)`` for a CUDA device, ``cpu (N threads)`` for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def compute_record(counts: PassCounts, wall_s: float, device, n_samples: int, resumed: int = 0) -> dict:
    """What one attribution job ran, JSON-ready: :class:`PassCounts`, wall seconds, device, GPU-hours (CUDA only).

    ``n_samples`` samples in the job, ``resumed`` of them read from checkpoints (their passes are not counted:
    the counts and the wall time are this process's)."""
    import torch

    on_gpu = torch.device(device).type == "cuda"
    return counts.as_dict() | {
        "n_samples": int(n_samples),
        "computed_samples": int(n_samples - resumed),
        "wall_s": round(float(wall_s), 3),
        "device": device_name(device),
        "gpu_hours": float(wall_s) / 3600.0 if on_gpu else None,
    }


def wall_time(flops: float, device_class: str, layer_calls: float = 0.0) -> float:
    """Seconds for ``flops`` at the sustained rate of ``device_class`` (:data:`DEVICE_FLOPS`) plus the fixed
    per-operation overhead of ``layer_calls`` layer executions (:data:`LAYER_CALL_SECONDS`)."""
    if device_class not in DEVICE_FLOPS:
        raise ValueError(f"device class {device_class!r} is not one of {sorted(DEVICE_FLOPS)}")
    return flops / DEVICE_FLOPS[device_class] + layer_calls * LAYER_CALL_SECONDS.get(device_class, 0.0)


def estimate(
    dims: ModelDims,
    seq_len: int,
    n_samples: int,
    n_p: int,
    steps: int,
    method: str = "per_layer",
    prefix_cache: bool = True,
    device_class: str | None = None,
    rule: str = "riemann_right",
    rows_per_pass: int = 16,
    scored_fraction: float = 0.5,
) -> dict:
    """:func:`ig_cost` plus the uncached cost, the speed-up and expected seconds on every (or one) device class."""
    kw = {"rule": rule, "rows_per_pass": rows_per_pass, "scored_fraction": scored_fraction}
    est = ig_cost(dims, seq_len, n_samples, n_p, steps, method, prefix_cache, **kw)
    base = ig_cost(dims, seq_len, n_samples, n_p, steps, method, False, **kw)
    est["flops_uncached"] = base["flops"]
    est["speedup_vs_uncached"] = base["flops"] / est["flops"]
    classes = [device_class] if device_class else list(DEVICE_FLOPS)
    est["seconds"] = {c: wall_time(est["flops"], c, est["layer_calls"]) for c in classes}
    return est


def estimate_from_model(model, seq_len: int, n_samples: int, n_p: int, steps: int, method: str, **kwargs) -> dict:
    """:func:`estimate` for a loaded model (what the workflow's attribute step logs)."""
    return estimate(dims_from_model(model), seq_len, n_samples, n_p, steps, method, **kwargs)


def _human(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def format_estimate(est: dict) -> str:
    """A few human-readable lines for an :func:`estimate` dict."""
    d = est["dims"]
    lines = [
        f"IG cost estimate: {est['method']}, prefix cache {'on' if est['prefix_cache'] else 'off'}; "
        f"{d['n_layers']} layers x {d['n_heads']} heads, hidden {d['hidden']}, vocab {d['vocab']}; "
        f"T={est['seq_len']}, {est['n_samples']} samples x {est['n_p']} mask probs x {est['steps']} steps",
        f"  rows: {est['grad_rows']:,} forward+backward, {est['loss_rows']:,} forward-only; "
        f"layer-passes: {est['layer_forwards']:,.0f} forward, {est['layer_backwards']:,.0f} backward",
        f"  FLOPs: {_human(est['flops'], 'FLOP')} (forward {_human(est['flops_forward'])}, "
        f"backward {_human(est['flops_backward'])})",
    ]
    if "flops_uncached" in est:
        lines.append(
            f"  uncached: {_human(est['flops_uncached'], 'FLOP')} ({est['speedup_vs_uncached']:.2f}x the FLOPs)"
        )
    for device, seconds in est.get("seconds", {}).items():
        lines.append(
            f"  expected on {device}: {_duration(seconds)} (at {_human(DEVICE_FLOPS[device], 'FLOP/s')} sustained)"
        )
    return "\n".join(lines)


def row_bytes(
    dims: ModelDims,
    seq_len: int,
    layers_run: int,
    n_scored: int,
    grad: bool = True,
    attention_matrix: bool = True,
    full_logits: bool = False,
) -> int:
    """Activation bytes one row adds to a forward(+backward) pass (see the module docstring).

    ``attention_matrix``: the kernel materialises heads x T x T scores (eager attention, SDPA math on CPU);
    False for fused (flash / memory-efficient) kernels.
    """
    t, d, b = seq_len, dims.hidden, dims.dtype_bytes
    scores = 2 * dims.n_heads * t * t * b if attention_matrix else 0
    per_layer_kept = t * (12 * d + 4 * dims.intermediate) * b + scores
    transient = t * (6 * d + 3 * dims.intermediate) * b + scores
    positions = t if full_logits else n_scored
    logits = 3 * positions * dims.vocab * 4 + 2 * t * d * 4
    kept = layers_run * per_layer_kept if grad else 0
    return int(kept + transient + logits + t * d * b)


def choose_rows(budget_bytes: int, bytes_per_row: int, max_rows: int | None = None) -> int:
    """Rows per pass whose activations fit ``budget_bytes``: ``rows * bytes_per_row <= budget`` whenever one
    row fits; at least 1 (a single row over budget still runs); at most ``max_rows``."""
    if bytes_per_row <= 0:
        raise ValueError("bytes_per_row must be positive")
    rows = max(1, int(budget_bytes) // int(bytes_per_row))
    return min(rows, max_rows) if max_rows else rows


FP32 = 4


def layer_kept_bytes(dims: ModelDims, seq_len: int, fused_attention: bool, first: bool = False) -> int:
    """Bytes autograd keeps for one row in one gated layer (see the module docstring); ``first``: the row's first
    layer, whose input needs no gradient (no attention or input-norm activations kept)."""
    t, d, b, h = seq_len, dims.hidden, dims.dtype_bytes, dims.n_heads
    mlp = (3 if dims.gated_mlp else 2) * t * dims.intermediate * b
    if first:
        return mlp + 2 * t * d * FP32
    if fused_attention:
        attention = 4 * t * d * b + h * t * FP32
    else:
        attention = 3 * t * d * b + h * t * t * (FP32 + (b if b < FP32 else 0))
    return mlp + 3 * t * d * FP32 + attention


def layer_transient_bytes(dims: ModelDims, seq_len: int, fused_attention: bool) -> int:
    """Working memory of one row's layer on top of what is kept: the larger of its forward and backward."""
    t, i, b, h = seq_len, dims.intermediate, dims.dtype_bytes, dims.n_heads
    scores = 0 if fused_attention else h * t * t
    forward = 2 * scores * b + t * i * b
    backward = 3 * t * i * b + 2 * scores * FP32
    return max(forward, backward)


def activation_bytes(
    dims: ModelDims,
    seq_len: int,
    layers_run: int,
    n_scored: float,
    rows: int = 1,
    grad: bool = True,
    fused_attention: bool = False,
    checkpointed: int = 0,
    first_checkpointed: bool | None = None,
) -> int:
    """Peak activation bytes of one engine pass of ``rows`` rows through ``layers_run`` layers (the last ones),
    ``n_scored`` scored positions per row, of which ``checkpointed`` layers run under activation checkpointing
    (``first_checkpointed``: the row's first layer is one of them; default: when all are). See the module
    docstring. Without ``grad`` only one layer's activations and its transient are live."""
    t, d, b, v = seq_len, dims.hidden, dims.dtype_bytes, dims.vocab
    s = float(n_scored)
    kept_layer = layer_kept_bytes(dims, t, fused_attention)
    transient = layer_transient_bytes(dims, t, fused_attention)
    logits = s * v * b  # held by the engine until the pass ends
    head = t * d * FP32 + s * v * FP32 + logits
    head_backward = s * v * (FP32 + (b if b < FP32 else 0))
    if not grad:
        return int(rows * (kept_layer + transient + head))
    first_checkpointed = checkpointed >= layers_run if first_checkpointed is None else first_checkpointed
    plain = max(layers_run - checkpointed, 0)
    kept = checkpointed * t * d * b + plain * kept_layer
    if plain and not first_checkpointed:
        kept -= kept_layer - layer_kept_bytes(dims, t, fused_attention, first=True)
    # the head's backward runs first, then the layers' (each checkpointed one recomputed on its turn)
    layers_phase = logits + (kept_layer if checkpointed else 0) + transient
    return int(rows * (kept + max(head + head_backward, layers_phase)))
