"""Weight initialisation shared by every Transformer: by module type, with residual projections marked.

GPT-2 / nanoGPT scheme: N(0, std) for every linear and embedding, norms at identity, and the projections that
write into the residual stream (attention ``out_proj``, MLP ``down_proj``) at std / √(2L), L being the depth
of the stack they live in. Each of the 2L residual branches adds a term to the stream, so shrinking each by
√(2L) keeps the stream's variance from growing with depth.

A module marks its residual projections itself with :func:`mark_residual` where it builds them, so a new
MLP or attention variant gets the scaled init by saying so, whatever its sub-modules are called.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from torch import nn

RESIDUAL_ATTR = "is_residual_projection"


def mark_residual(linear: nn.Linear) -> nn.Linear:
    """Mark ``linear`` as writing into the residual stream (scaled init); returns it, for use inline."""
    setattr(linear, RESIDUAL_ATTR, True)
    return linear


def is_residual(module: nn.Module) -> bool:
    return bool(getattr(module, RESIDUAL_ATTR, False))


def init_weights(model: nn.Module, std: float, stacks: Sequence[nn.ModuleList],
                 modules: Iterable[nn.Module] | None = None) -> None:
    """Initialise ``model`` in place, visiting modules in a fixed order (so the RNG draws are reproducible).

    Args:
        std: standard deviation of linears and embeddings (``config.init_std``).
        stacks: the block lists; a residual projection inside ``stack`` gets std / √(2·len(stack)).
        modules: the modules to initialise, in this order; default ``model.modules()`` (registration order).

    Linears and embeddings are drawn from N(0, std) (biases zeroed); any other module with its own
    ``reset_parameters`` (the norms) is reset by it. A module outside every stack is never residual-scaled.
    """
    depth = {id(m): len(stack) for stack in stacks for m in stack.modules()}
    for m in model.modules() if modules is None else modules:
        if isinstance(m, nn.Linear):
            s = std / math.sqrt(2 * max(depth.get(id(m), 1), 1)) if is_residual(m) else std
            nn.init.normal_(m.weight, mean=0.0, std=s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif m is not model and _owns_reset(m):
            m.reset_parameters()


def _owns_reset(m: nn.Module) -> bool:
    """True for leaf-level modules with parameters of their own and a ``reset_parameters`` (norms)."""
    return callable(getattr(m, "reset_parameters", None)) and any(True for _ in m.parameters(recurse=False))


__all__ = ["init_weights", "mark_residual", "is_residual"]
