"""Int8 weights for inference: :class:`Int8Linear` and :func:`quantize_linears`.

Decoding one token at a time reads every weight once per step, so at small batch it is bound by memory
bandwidth, not arithmetic: int8 weights read a quarter of the bytes of fp32. Which kernel does the matmul
decides whether that pays, and on CPU the candidates were measured side by side (``benchmarks/quantize.py``):

* PyTorch's fbgemm dynamic int8 linear (``torch.ops.quantized.linear_dynamic``: int8 weights pre-packed,
  activations quantized to 8 bits on the fly, int32 accumulation) runs a GPT-2-small decode step's matmuls
  4-5x faster than fp32 at batch 1 and ~9x at batch 8, and uses a second thread;
* weight-only int8 (``torch._weight_int8pack_mm``, torchao's ``Int8WeightOnlyConfig`` in eager mode) was
  slower than the fbgemm path, with fp32 activations slower than fp32 itself; grouped int4
  (``torch._weight_int4pack_mm_for_cpu``) kept the perplexity within 0.5 % but was slower than fbgemm int8 at
  batch 8 everywhere and at batch 1 on AVX2 (it took 0.8x of int8's time only at batch 1 on AVX-512 / VNNI),
  so it is not offered.

So activations are quantized too, and how matters for a batch. fbgemm picks one scale for the whole input
tensor; a row's result would then depend on the other rows of its batch (batched decoding would differ from
one request at a time). Here each row is first divided by its own absolute maximum, and two fixed anchor
*columns* ``[-h/(h-1), 1]`` are appended to every row (see ``_HALF`` below), against two zero columns of the
packed weight, so the range fbgemm quantizes over is always the same and the anchors add nothing to the
product: every row is quantized with its own scale whatever else is in the batch, and batched = one at a
time holds exactly. (An earlier version appended one anchor *row* instead; the same arithmetic, but fbgemm's
cost steps up with each extra row: M = 2 took ~1.2x the time of M = 1, M = 9 ~1.1x that of M = 8, while two
extra columns cost nothing measurable.)

Weights are stored as ``weight`` (int8, ``(out, in)``) and ``scale`` (float32, ``(out,)``, symmetric
per output channel: ``w ≈ weight * scale[:, None]``), which is what ``save_pretrained`` writes to safetensors;
the packed fbgemm form is rebuilt from them on first use. Off the CPU (no fbgemm) the layer dequantizes and
runs a float matmul: correct, but without the speed-up.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .linear import Linear

SCHEMES = ("int8",)
# The layers quantize replaces: plain float linears only (a LoRA wrapper or a subclass with its own forward
# would lose what it adds).
FLOAT_LINEARS = (nn.Linear, Linear)



def _has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI): u8 x s8 dot products accumulate straight into int32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# Without VNNI, fbgemm's u8 x s8 multiply-add sums pairs in int16, which 8-bit activations can saturate; 7 bits
# keep it exact there. With VNNI nothing saturates, and the eighth bit halves the activation rounding (on the
# bundled models: greedy agreement with fp32 up from ~50 % to ~65 % of tokens; benchmarks/quantize.py).
REDUCE_RANGE = not _has_vnni()
_FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines
# fbgemm maps [min, max] onto the integers 0..2^b-1 (b = 7 or 8). The anchor columns [-h/(h-1), 1]
# (h = 2^(b-1)) make that map x -> round(x * (h-1)) + h exactly: zero, -1 and 1 land on integers, so a row
# scaled to [-1, 1] is rounded symmetrically to multiples of 1/(h-1) (1/127; 1/63 with REDUCE_RANGE): no bias.
_HALF = 64 if REDUCE_RANGE else 128
_ANCHOR = torch.tensor([[-_HALF / (_HALF - 1), 1.0]])  # (1, 2): the anchor columns of one row
_ANCHORS: dict[int, torch.Tensor] = {}  # rows M -> the (M, 2) anchor columns, shared read-only


def _anchor_columns(rows: int) -> torch.Tensor:
    """The (rows, 2) anchor columns, cached per row count (decoding asks for the same few counts every step)."""
    a = _ANCHORS.get(rows)
    if a is None:
        a = _ANCHOR.expand(rows, 2).contiguous()
        if rows <= 256:  # a long prompt's row count is seen once: not worth keeping
            _ANCHORS[rows] = a
    return a


def check_scheme(scheme: str) -> str:
    """``scheme`` if it is a supported quantization scheme, else a ConfigError naming the choices."""
    if scheme not in SCHEMES:
        raise ConfigError(f"Unknown quantization scheme {scheme!r}; supported: {', '.join(SCHEMES)}.")
    return scheme


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (out, in) float -> (int8 (out, in), float32 scale (out,))."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` with int8 weights: ``y = x @ (weight * scale)^T + bias``, activations quantized
    per row (see the module docstring). Inference only: it has no parameters and no gradient.

    Shapes: input (..., in_features), any float dtype; output (..., out_features) in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device)
                             if bias else None)
        self._packed: tuple[tuple[int, ...], object] | None = None  # (version key, fbgemm packed params)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The int8 copy of ``linear`` (on its device); ``linear`` itself is left unchanged."""
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device)
        q.weight, q.scale = quantize_weight(w)
        if linear.bias is not None:
            q.bias = linear.bias.detach().float().clone()
        return q

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the int8 one stands for, (out, in)."""
        return self.weight.float() * self.scale[:, None]

    def _packed_params(self) -> object:
        # keyed on the buffers' identity and version: load_state_dict or .to() invalidates the packed copy
        w, s = self.weight, self.scale
        key = (w.data_ptr(), w._version, s.data_ptr(), s._version)
        if self._packed is None or self._packed[0] != key:
            with warnings.catch_warnings():  # quantized tensor types are deprecated; fbgemm's packing still needs one
                warnings.simplefilter("ignore", UserWarning)
                # two zero columns meet the anchor columns forward appends: they pin the range, add nothing
                padded = torch.cat([w, w.new_zeros(w.shape[0], 2)], dim=1)
                qw = torch._make_per_channel_quantized_tensor(padded, s.double(),
                                                              torch.zeros_like(s, dtype=torch.long), 0)
            # no bias in the packed copy: forward adds it after the per-row rescale
            self._packed = (key, torch.ops.quantized.linear_prepack(qw, None))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise ConfigError("Int8Linear is for inference: its weights have no gradient. Train the float model "
                              "and quantize the result (model.quantize('int8') after training).")
        if not _FBGEMM or x.device.type != "cpu":
            w = self.dequantized().to(x.dtype)
            return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        shape, dtype = x.shape, x.dtype
        rows = x.reshape(-1, self.in_features)
        if dtype != torch.float32:
            rows = rows.float()
        amax = rows.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12)
        # rows in [-1, 1], then the anchor columns that pin fbgemm's range (against zero weight columns)
        unit = torch.cat([rows / amax, _anchor_columns(rows.shape[0])], dim=1)
        y = torch.ops.quantized.linear_dynamic(unit, self._packed_params(), REDUCE_RANGE).mul_(amax)
        if self.bias is not None:  # after the per-row rescale: the packed copy carries no bias
            y.add_(self.bias)
        if dtype != torch.float32:
            y = y.to(dtype)
        return y.view(*shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        # .to(device) moves the buffers; .to(dtype) / .half() must not touch them: the scales and bias stay
        # float32 (the activations are cast at run time), and the packed copy is rebuilt from the moved buffers
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(out.device)

        self._packed = None
        return super()._apply(keep_dtype, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linears(model: nn.Module, scheme: str = "int8", skip: Iterable[str] = ()) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (in place) by its :class:`Int8Linear`; returns their names.

    ``skip`` holds module names (as in ``named_modules``) left in float. Weights tied to an embedding keep
    the embedding in float: only the linear's copy is quantized.
    """
    check_scheme(scheme)
    skip = set(skip)
    done = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) in FLOAT_LINEARS and full not in skip:
                setattr(module, child_name, Int8Linear.from_linear(child))
                done.append(full)
    return done


def int8_structure(model: nn.Module, names: Iterable[str]) -> None:
    """Turn the linears called ``names`` into empty :class:`Int8Linear` s (on their device), ready for
    ``load_state_dict`` of a saved quantized model: nothing is quantized twice.

    Raises:
        CheckpointError: a name that is not an ``nn.Linear`` of ``model`` (a config from another model).
    """
    for full in names:
        parent_name, _, child_name = full.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            parent = None
        child = getattr(parent, child_name, None) if parent is not None else None
        if type(child) not in FLOAT_LINEARS:
            raise CheckpointError(f"The saved quantization names {full!r}, which is not an nn.Linear of "
                                  f"{type(model).__name__}: config.json and the model do not match. Re-save it.")
        setattr(parent, child_name, Int8Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                               device=child.weight.device))


def has_quantized(model: nn.Module) -> bool:
    """Whether any module of ``model`` is an :class:`Int8Linear`."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


__all__ = ["SCHEMES", "Int8Linear", "quantize_linears", "quantize_weight", "int8_structure", "check_scheme",
           "has_quantized"]
