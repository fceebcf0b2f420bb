"""Attribution methods built on the engine's two primitives (losses and gate gradients of rows)."""
