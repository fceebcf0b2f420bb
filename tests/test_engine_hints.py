"""prefix_hint / clear_prefix live in the engine, beside the prefix cache they serve (methods import them)."""

from types import SimpleNamespace

import torch

from headattr.engine import gate_engine as engine
from headattr.methods import ablation, shapley


def test_prefix_hint_is_the_engines_and_starts_each_row_at_its_first_changed_layer():
    assert ablation.prefix_hint is engine.prefix_hint and shapley.clear_prefix is engine.clear_prefix
    assert "def prefix_hint" not in open(ablation.__file__).read()
    gates = torch.ones(3, 4, 2)
    gates[1, 2, 1] = 0.0
    gates[2, 1, 0], gates[2, 3, 1] = 0.5, 0.0
    hint = engine.prefix_hint(SimpleNamespace(prefix_cache=True), gates)
    assert hint["from_layer"].tolist() == [3, 2, 1]  # all-on rows start at the last layer
    assert engine.prefix_hint(SimpleNamespace(prefix_cache=False), gates) == {}


def test_clear_prefix_only_where_the_engine_keeps_one():
    calls = []
    engine.clear_prefix(SimpleNamespace(clear_prefix=lambda: calls.append(1)))
    engine.clear_prefix(SimpleNamespace())
    assert calls == [1]
