"""The two batched primitives every method rests on: losses and gate gradients of rows.

A row is (mask-probability index, gate matrix [n_layers, n_heads]) applied to one sample. Rows run as one
batch with per-row gates, chunked to ``rows_per_pass`` rows per forward pass. Because rows are independent,
the gradient of the summed row losses with respect to the stacked gates is every row's own gradient.

Speed-ups that live here, beneath all methods: model parameters never require grad; vocabulary logits are
computed only at scored positions (a pre-hook on the adapter's head module selects them before the
projection to the vocabulary); no key/value cache is built; and prefix caching (``from_layer``): a row whose
gates below layer l are all 1 runs only layers l..L-1 from the hidden states cached by one all-on pass per
sample (see :mod:`headattr.engine.prefix`), so per-layer IG runs about half the layers and backpropagates through fewer;
the same pass records each layer's attention output (z), which a row starting at layer l replays instead of
recomputing layer l's q/k/v projections and attention (``attention_cache``).
Rows per pass come from ``rows_per_pass`` or, when that is None, from a memory budget (see :mod:`headattr.engine.cost`).
"""

from __future__ import annotations

import inspect
import os
from contextlib import nullcontext
from typing import NamedTuple

import torch

from ..errors import NonFiniteError
from ..models.adapters import Adapter
from ..models.checkpointing import checkpointed_layers, layer_checkpointing
from ..models.gates import HeadGates
from ..objective.loss import ScoredInput, token_cross_entropy
from .cost import PassCounts, activation_bytes, attention_part, choose_rows, dims_from_model
from .prefix import LayerStack

MAX_AUTO_ROWS = 256
CPU_BUDGET_CAP = 2 << 30


class _Prefix(NamedTuple):
    """What one all-on pass over a sample cached: hidden states entering layers, and replayable attention."""

    scored: ScoredInput
    hidden: dict[int, torch.Tensor]
    attention: dict[int, tuple]  # layer -> (ReplayForm, z)


def default_memory_budget(device: torch.device) -> int:
    """Activation bytes per pass when none is given: 80% of free CUDA memory, else 25% of physical RAM (<= 2 GiB).

    On CPU the budget depends only on the machine (not on what is free right now), so rows per pass, and with
    them the bits of every result, are the same from run to run.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.8 * (free + reusable))
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 4 * CPU_BUDGET_CAP
    return int(min(0.25 * physical, CPU_BUDGET_CAP))


class GateEngine:
    """Batched ``losses`` / ``gradients`` over rows of gate matrices for one model.

    Args:
        adapter: the model seen as gateable heads.
        rows_per_pass (int | None): rows per forward pass (memory knob). None: chosen per pass from
            ``memory_budget`` and the model config. Default: 16.
        autocast_dtype: e.g. ``torch.bfloat16`` on GPU; gates and accumulators stay fp32 regardless.
        prefix_cache (bool): honour ``from_layer`` (run only the layers above it from cached hidden states).
            False runs every row through the whole model (the reference behaviour). Default: True.
        memory_budget (int | None): activation bytes per pass for ``rows_per_pass=None``; default
            :func:`default_memory_budget`.
        attention_cache (bool): with ``prefix_cache``, replay the cached attention of a row's first layer where
            the adapter allows (see :mod:`headattr.engine.prefix`). Default: True.
        unique_rows (bool): forward-only passes run each distinct (input, gates) row of a chunk once and score
            every row that repeats it from that one (lm-eval's one-token choices sharing a context, ELBO rows
            that drew the same mask). Without repeats the pass is unchanged. Default: False.
        activation_checkpointing (str): ``none``, ``whole_layer`` or ``every_k`` (every ``checkpoint_every``-th
            layer) for gradient passes (see :mod:`headattr.models.checkpointing`): less activation memory per row,
            one more forward of the checkpointed layers; same gradients. Default: none.
        checkpoint_every (int): k of ``every_k``. Default: 1.

    Attributes:
        counts (:class:`headattr.engine.cost.PassCounts`): row-passes, layer-passes, model and layer calls and
            cost-model FLOPs of everything this engine ran (the attribute stage records them per shard).
    """

    def __init__(
        self,
        adapter: Adapter,
        rows_per_pass: int | None = 16,
        autocast_dtype: torch.dtype | None = None,
        prefix_cache: bool = True,
        memory_budget: int | None = None,
        attention_cache: bool = True,
        unique_rows: bool = False,
        activation_checkpointing: str = "none",
        checkpoint_every: int = 1,
    ):
        if rows_per_pass is not None and rows_per_pass < 1:
            raise ValueError("rows_per_pass must be >= 1 (or None for the memory-budget chooser)")
        self.adapter = adapter
        self.model = adapter.model
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        self.rows_per_pass = None if rows_per_pass is None else int(rows_per_pass)
        self.autocast_dtype = autocast_dtype
        self.prefix_cache = bool(prefix_cache)
        self.attention_cache = bool(attention_cache) and self.prefix_cache
        self.memory_budget = memory_budget
        self.unique_rows = bool(unique_rows)
        self.activation_checkpointing = activation_checkpointing
        self.checkpoint_every = int(checkpoint_every)
        self._checkpointed = checkpointed_layers(adapter.n_layers, activation_checkpointing, checkpoint_every)
        self._stack = LayerStack(adapter) if self.prefix_cache else None
        self._prefix: _Prefix | None = None
        self._extra_inputs = {"use_cache": False} if _accepts(self.model.forward, "use_cache") else {}
        try:
            self._dims = dims_from_model(self.model)
        except ValueError:
            self._dims = None
        self._gates = HeadGates(adapter)
        self.counts = PassCounts()  # what this engine ran (see :class:`headattr.engine.cost.PassCounts`)
        self._selection: tuple[torch.Tensor, torch.Tensor] | None = None
        self._selected = False
        self._head_handle = (
            adapter.head_module.register_forward_pre_hook(self._select_hook)
            if adapter.head_module is not None
            else None
        )

    def close(self) -> None:
        """Remove every hook this engine installed."""
        self._gates.remove()
        self.clear_prefix()
        if self._head_handle is not None:
            self._head_handle.remove()
            self._head_handle = None

    def prepare_prefix(self, scored: ScoredInput) -> None:
        """Cache the hidden states entering every layer above 0 in one all-on pass (no-op without prefix caching).

        Caching all layers at once makes every later row independent of which layers were asked for first, so a
        layer-sharded run computes the same bits as an unsharded one.
        """
        if self.prefix_cache and self.adapter.n_layers > 1:
            self._ensure_prefix(scored, list(range(1, self.adapter.n_layers)))

    def clear_prefix(self) -> None:
        """Drop the cached hidden states of the last sample (they are replaced anyway by the next one)."""
        self._prefix = None

    def _select_hook(self, module, args):
        if self._selection is None or not args:
            return None
        rows, pos = self._selection
        self._selected = True
        return (args[0][rows, pos].unsqueeze(0), *args[1:])

    def losses(
        self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, describe=None, from_layer=None
    ) -> torch.Tensor:
        """Loss of every row, float64 [rows]. ``gates`` is [rows, n_layers, n_heads]; ``from_layer`` see below."""
        return self._run(scored, row_p, gates, False, describe, from_layer=from_layer)[0]

    def losses_and_accuracy(
        self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, describe=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses float64 [rows], masked-token accuracy float64 [rows]: argmax == target at scored positions)."""
        loss, _, acc = self._run(scored, row_p, gates, False, describe, accuracy=True)
        return loss, acc

    def gradients(
        self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, describe=None, from_layer=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses float64 [rows], dL/dgates float32 [rows, n_layers, n_heads]).

        ``from_layer`` (long [rows], optional): row r promises that its gates below layer ``from_layer[r]`` are 1;
        with ``prefix_cache`` it then runs only the layers from there up, and its gradient for the gates below
        is returned as 0 (not computed). Losses are unchanged.
        """
        return self._run(scored, row_p, gates, True, describe, from_layer=from_layer)[:2]

    def rows_for(self, scored: ScoredInput, layers_run: int, grad: bool) -> int:
        """Rows per pass for rows running ``layers_run`` layers: ``rows_per_pass`` or the memory-budget choice."""
        if self.rows_per_pass is not None:
            return self.rows_per_pass
        if self._dims is None:
            return 16
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "eager")
        start = self.adapter.n_layers - layers_run
        checkpointed = [i for i in self._checkpointed if i >= start] if grad else []
        per_row = activation_bytes(
            self._dims,
            scored.input_ids.shape[1],
            layers_run,
            max(scored.n_scored),
            grad=grad,
            fused_attention=attn not in (None, "eager"),
            checkpointed=len(checkpointed),
            first_checkpointed=start in checkpointed,
        )
        budget = self.memory_budget if self.memory_budget is not None else default_memory_budget(self.device)
        return choose_rows(budget, per_row, MAX_AUTO_ROWS)

    def _run(self, scored, row_p, gates, grad: bool, describe, accuracy=False, from_layer=None):
        row_p = torch.as_tensor(row_p, dtype=torch.long)
        n_rows = row_p.shape[0]
        if gates.shape[0] != n_rows:
            raise ValueError(f"{gates.shape[0]} gate rows for {n_rows} rows")
        start = self._start_layers(gates, from_layer)
        losses = torch.zeros(n_rows, dtype=torch.float64)
        accs = torch.zeros(n_rows, dtype=torch.float64)
        grads = torch.zeros(gates.shape, dtype=torch.float32) if grad else None
        for layer in start.unique().tolist():
            rows = (start == layer).nonzero().flatten()
            if layer > 0:
                self._ensure_prefix(scored, start.unique().tolist())
            chunk = self.rows_for(scored, self.adapter.n_layers - layer, grad)
            for idx in self._chunks(scored, row_p, gates, rows, chunk, grad, layer):
                loss, g, acc = self._chunk(scored, row_p[idx], gates[idx], grad, layer, accuracy)
                self._count(scored, row_p[idx], layer, grad)
                bad = ~torch.isfinite(loss)
                if g is not None:
                    bad |= ~torch.isfinite(g).flatten(1).all(dim=1)
                if bad.any():
                    row = int(idx[bad.nonzero()[0, 0]])
                    what = describe(row) if describe else f"row {row}"
                    raise NonFiniteError(f"non-finite loss or gradient for sample {scored.sample_id!r}, {what}")
                losses[idx] = loss
                if acc is not None:
                    accs[idx] = acc
                if g is not None:
                    grads[idx] = g
        return losses, grads, (accs if accuracy else None)

    def _uniting(self, grad: bool, layer: int) -> bool:
        return self.unique_rows and not grad and layer == 0

    def _chunks(self, scored, row_p, gates, rows: torch.Tensor, chunk: int, grad: bool, layer: int):
        """Row indices of each pass: ``chunk`` rows, or with ``unique_rows`` ``chunk`` distinct rows and their
        repeats."""
        if not self._uniting(grad, layer):
            return [rows[lo : lo + chunk] for lo in range(0, rows.numel(), chunk)]
        _, distinct = _first_of_repeats(scored.input_ids[row_p[rows]], gates[rows])
        return [rows[(distinct >= lo) & (distinct < lo + chunk)] for lo in range(0, int(distinct.max()) + 1, chunk)]

    def _count(self, scored: ScoredInput, row_p: torch.Tensor, layer: int, grad: bool) -> None:
        """Add one model call of rows ``row_p`` starting at ``layer`` to :attr:`counts`."""
        seq_len = scored.input_ids.shape[1]
        n_scored = sum(scored.targets[i].numel() for i in row_p.tolist()) if self._head_handle else len(row_p) * seq_len
        replayed = layer > 0 and self._prefix is not None and layer in self._prefix.attention
        self.counts.add(self._dims, seq_len, len(row_p), self.adapter.n_layers - layer, n_scored, grad, replayed)

    def _start_layers(self, gates: torch.Tensor, from_layer) -> torch.Tensor:
        """First layer each row runs: ``from_layer`` when prefix caching is on (checked against the gates), else 0."""
        n_rows = gates.shape[0]
        if from_layer is None or not self.prefix_cache:
            return torch.zeros(n_rows, dtype=torch.long)
        start = torch.as_tensor(from_layer, dtype=torch.long).reshape(-1).expand(n_rows).clone()
        if bool(((start < 0) | (start >= self.adapter.n_layers)).any()):
            raise ValueError(f"from_layer must lie in 0..{self.adapter.n_layers - 1}")
        below = torch.arange(self.adapter.n_layers)[None, :] < start[:, None]  # [rows, L]
        if bool((below[:, :, None] & (gates != 1)).any()):
            raise ValueError("from_layer: a row has a gate != 1 below its from_layer")
        return start

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()

    def _ensure_prefix(self, scored: ScoredInput, layers: list[int]) -> None:
        """Cache the hidden states entering ``layers`` (and their attention, with ``attention_cache``) for every
        mask probability of ``scored`` (all gates on)."""
        wanted = {x for x in layers if x > 0}
        if self._prefix is not None and self._prefix.scored is scored and wanted <= self._prefix.hidden.keys():
            return
        self._prefix = None
        ids = scored.input_ids.to(self.device)
        cache: dict[int, list[torch.Tensor]] = {x: [] for x in wanted}
        z_parts: dict[int, list[tuple]] = {}
        chunk = self.rows_for(scored, max(wanted) + 1, False)
        for lo in range(0, ids.shape[0], chunk):
            inputs = {**self.adapter.model_inputs(ids[lo : lo + chunk]), **self._extra_inputs}
            with torch.no_grad(), self._autocast():
                part, replays = self._stack.capture(
                    lambda inputs=inputs: self.model(**inputs), wanted, wanted if self.attention_cache else ()
                )
            rows, last = ids[lo : lo + chunk].shape[0], max(wanted)
            replays_last = self.attention_cache and self._stack.sites[last] is not None and self._dims is not None
            extra = rows * attention_part(self._dims, ids.shape[1]) if replays_last else 0.0
            self.counts.add(self._dims, ids.shape[1], rows, last, 0, False, extra_forward=extra)
            for x, hidden in part.items():
                cache[x].append(hidden)
            for x, form_z in replays.items():
                z_parts.setdefault(x, []).append(form_z)
        complete = {x: parts for x, parts in z_parts.items() if len(parts) == len(cache[x])}  # replayed in every chunk
        attention = {x: (parts[0][0], torch.cat([z for _, z in parts])) for x, parts in complete.items()}
        self._prefix = _Prefix(scored, {x: torch.cat(parts) for x, parts in cache.items()}, attention)

    def _chunk(self, scored: ScoredInput, row_p, gates: torch.Tensor, grad: bool, layer: int = 0, accuracy=False):
        n = [scored.targets[i].numel() for i in row_p.tolist()]
        sel_rows = torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n))
        sel_pos = torch.cat([scored.pred_pos[i] for i in row_p.tolist()])
        targets = torch.cat([scored.targets[i] for i in row_p.tolist()]).to(self.device)
        weight64 = torch.repeat_interleave(scored.token_weight[row_p], torch.tensor(n)).to(self.device)
        ids = scored.input_ids[row_p].to(self.device)
        g = gates.to(device=self.device, dtype=torch.float32).detach().requires_grad_(grad)
        model_rows = sel_rows
        if self._uniting(grad, layer) and len(n) > 1:
            first, inverse = _first_of_repeats(ids, g)
            ids, g, model_rows = ids[first.to(self.device)], g[first.to(self.device)], inverse[sel_rows]
        self._gates.gates = g
        self._selection = (model_rows.to(self.device), sel_pos.to(self.device))
        self._selected = False
        suffix, replay = nullcontext(), None
        recompute = layer_checkpointing(self.adapter, self._checkpointed) if grad else nullcontext()
        if layer > 0:
            cached = self._prefix.hidden[layer]
            if layer in self._prefix.attention:
                form, z = self._prefix.attention[layer]
                replay = (form, lambda: z[row_p.to(z.device)])
            suffix = self._stack.suffix(layer, lambda: cached[row_p.to(cached.device)], replay)
        try:
            with torch.set_grad_enabled(grad), self._autocast(), recompute, suffix as calls:
                out = self.model(**self.adapter.model_inputs(ids), **self._extra_inputs)
                expected = [layer] + (["attention"] if replay else [])  # layer l's pre-hook fires before its attention
                if layer > 0 and calls != expected:
                    raise RuntimeError(f"prefix cache: layer {layer} ran as {calls} in a suffix pass, not {expected}")
                logits = out.logits if hasattr(out, "logits") else out[0]
                logits = logits.reshape(-1, logits.shape[-1]) if self._selected else logits[self._selection]
                compute = torch.promote_types(logits.dtype, torch.float32)
                ce = token_cross_entropy(logits.to(compute), targets)
                row_loss = torch.zeros(len(n), dtype=compute, device=self.device).index_add(
                    0, sel_rows.to(self.device), ce * weight64.to(compute)
                )
                grads = torch.autograd.grad(row_loss.sum(), g)[0] if grad else None
        finally:
            self._gates.gates = None
            self._selection = None
        rows64 = torch.zeros(len(n), dtype=torch.float64, device=self.device)
        loss64 = rows64.index_add(0, sel_rows.to(self.device), ce.detach().double() * weight64)
        acc = None
        if accuracy:
            hits = (logits.detach().argmax(-1) == targets).double()
            acc = rows64.index_add(0, sel_rows.to(self.device), hits)
            acc = (acc / torch.tensor(n, dtype=torch.float64, device=self.device)).cpu()
        return loss64.cpu(), (grads.float().cpu() if grad else None), acc


def _first_of_repeats(ids: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each distinct (ids, gates) row in order of appearance [U], each row's distinct index [R])."""
    key = torch.cat([ids.cpu().double(), gates.detach().cpu().flatten(1).double()], 1)  # exact: ids < 2**53
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(key))
    first = torch.full((int(inverse.max()) + 1,), len(key)).scatter_reduce(0, inverse, rows, "amin")
    order = first.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return first[order], rank[inverse]


AUTOCAST_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def engine_for(adapter: Adapter, model_cfg: dict, engine_cfg: dict) -> GateEngine:
    """The workflow's engine: ``engine_cfg`` {rows_per_pass, memory_budget_gib}, ``model_cfg`` {autocast,
    activation_checkpointing, checkpoint_every}."""
    budget = engine_cfg.get("memory_budget_gib")
    return GateEngine(
        adapter,
        rows_per_pass=engine_cfg.get("rows_per_pass"),
        autocast_dtype=AUTOCAST_DTYPES[model_cfg.get("autocast")],
        memory_budget=None if budget is None else int(budget * 2**30),
        activation_checkpointing=model_cfg.get("activation_checkpointing") or "none",
        checkpoint_every=model_cfg.get("checkpoint_every") or 1,
    )


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def prefix_hint(engine, gates: torch.Tensor) -> dict:
    """Keyword ``from_layer`` for ``engine.losses`` of rows ``gates`` [R, L, H] (empty without prefix caching).

    Row r starts at its first layer with a gate != 1 (all-on rows at the last layer), so an engine with prefix
    caching runs only the layers from there up. Only for losses: gradients of gates below would read 0.
    """
    if not getattr(engine, "prefix_cache", False):
        return {}
    changed = (gates != 1).any(-1)  # [R, L]
    last = torch.full((gates.shape[0],), gates.shape[1] - 1)
    return {"from_layer": torch.where(changed.any(-1), changed.float().argmax(-1), last).long()}


def clear_prefix(engine) -> None:
    """Drop the engine's cached hidden states of this sample, where it keeps any."""
    if hasattr(engine, "clear_prefix"):
        engine.clear_prefix()
