"""The two batched primitives every method rests on: losses and gate gradients of rows.

A row is (mask-probability index, gate matrix [n_layers, n_heads]) applied to one sample. Rows run as one
batch with per-row gates, chunked to ``rows_per_pass`` rows per forward pass. Because rows are independent,
the gradient of the summed row losses with respect to the stacked gates is every row's own gradient.

Speed-ups that live here, beneath all methods: model parameters never require grad; vocabulary logits are
computed only at scored positions (a pre-hook on the adapter's head module selects them before the
projection to the vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .errors import NonFiniteError
from .models.adapters import Adapter
from .models.gates import HeadGates
from .objective.loss import ScoredInput


class GateEngine:
    """Batched ``losses`` / ``gradients`` over rows of gate matrices for one model.

    Args:
        adapter: the model seen as gateable heads.
        rows_per_pass (int): rows per forward pass (memory knob). Default: 16.
        autocast_dtype: e.g. ``torch.bfloat16`` on GPU; gates and accumulators stay fp32 regardless.
    """

    def __init__(self, adapter: Adapter, rows_per_pass: int = 16, autocast_dtype: torch.dtype | None = None):
        if rows_per_pass < 1:
            raise ValueError("rows_per_pass must be >= 1")
        self.adapter = adapter
        self.model = adapter.model
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        self.rows_per_pass = int(rows_per_pass)
        self.autocast_dtype = autocast_dtype
        self._gates = HeadGates(adapter)
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
        if self._head_handle is not None:
            self._head_handle.remove()
            self._head_handle = None

    def _select_hook(self, module, args):
        if self._selection is None or not args:
            return None
        rows, pos = self._selection
        self._selected = True
        return (args[0][rows, pos].unsqueeze(0), *args[1:])

    def losses(self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, describe=None) -> torch.Tensor:
        """Loss of every row, float64 [rows]. ``gates`` is [rows, n_layers, n_heads]."""
        return self._run(scored, row_p, gates, False, describe)[0]

    def losses_and_accuracy(
        self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, describe=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses float64 [rows], masked-token accuracy float64 [rows]: argmax == target at scored positions)."""
        loss, _, acc = self._run(scored, row_p, gates, False, describe, accuracy=True)
        return loss, acc

    def gradients(
        self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, describe=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses float64 [rows], dL/dgates float32 [rows, n_layers, n_heads])."""
        return self._run(scored, row_p, gates, True, describe)[:2]

    def _run(self, scored, row_p, gates, grad: bool, describe: Callable[[int], str] | None, accuracy=False):
        row_p = torch.as_tensor(row_p, dtype=torch.long)
        if gates.shape[0] != row_p.shape[0]:
            raise ValueError(f"{gates.shape[0]} gate rows for {row_p.shape[0]} rows")
        losses, grads, accs = [], [], []
        for start in range(0, row_p.shape[0], self.rows_per_pass):
            stop = min(start + self.rows_per_pass, row_p.shape[0])
            loss, g, acc = self._chunk(scored, row_p[start:stop], gates[start:stop], grad)
            accs.append(acc)
            bad = ~torch.isfinite(loss)
            if g is not None:
                bad |= ~torch.isfinite(g).flatten(1).all(dim=1)
            if bad.any():
                row = start + int(bad.nonzero()[0, 0])
                what = describe(row) if describe else f"row {row}"
                raise NonFiniteError(f"non-finite loss or gradient for sample {scored.sample_id!r}, {what}")
            losses.append(loss)
            if g is not None:
                grads.append(g)
        return torch.cat(losses), (torch.cat(grads) if grad else None), (torch.cat(accs) if accuracy else None)

    def _chunk(self, scored: ScoredInput, row_p: torch.Tensor, gates: torch.Tensor, grad: bool):
        n = [scored.targets[i].numel() for i in row_p.tolist()]
        sel_rows = torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n))
        sel_pos = torch.cat([scored.pred_pos[i] for i in row_p.tolist()])
        targets = torch.cat([scored.targets[i] for i in row_p.tolist()]).to(self.device)
        weight64 = torch.repeat_interleave(scored.token_weight[row_p], torch.tensor(n)).to(self.device)
        ids = scored.input_ids[row_p].to(self.device)
        g = gates.to(device=self.device, dtype=torch.float32).detach().requires_grad_(grad)
        self._gates.gates = g
        self._selection = (sel_rows.to(self.device), sel_pos.to(self.device))
        self._selected = False
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        try:
            with torch.set_grad_enabled(grad), autocast:
                out = self.model(**self.adapter.model_inputs(ids))
                logits = out.logits if hasattr(out, "logits") else out[0]
                logits = logits.reshape(-1, logits.shape[-1]) if self._selected else logits[self._selection]
                compute = torch.promote_types(logits.dtype, torch.float32)
                ce = F.cross_entropy(logits.to(compute), targets, reduction="none")
                row_loss = torch.zeros(len(n), dtype=compute, device=self.device).index_add(
                    0, self._selection[0], ce * weight64.to(compute)
                )
                grads = torch.autograd.grad(row_loss.sum(), g)[0] if grad else None
        finally:
            self._gates.gates = None
            self._selection = None
        loss64 = torch.zeros(len(n), dtype=torch.float64, device=self.device).index_add(
            0, sel_rows.to(self.device), ce.detach().double() * weight64
        )
        hits = (logits.detach().argmax(-1) == targets).double()
        acc = torch.zeros(len(n), dtype=torch.float64, device=self.device).index_add(0, sel_rows.to(self.device), hits)
        acc = acc / torch.tensor(n, dtype=torch.float64, device=self.device)
        return loss64.cpu(), (grads.float().cpu() if grad else None), acc.cpu()
