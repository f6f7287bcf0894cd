"""``Linear``: ``nn.Linear`` whose small-batch inference uses every thread on CPU.

Decoding feeds each linear layer a handful of rows (one per sequence in the batch) against a weight matrix
that does not fit in cache, so the step is bound by how fast the weights stream from memory. On CPU,
``F.linear`` hands such a product to MKL's gemv / small-M gemm, which runs it on **one thread** whatever
``torch.set_num_threads`` says. Measured on the 2-core machine this project runs on (GPT-2-small shapes, the
weights of 12 layers plus the 50257-row head streamed from memory, ms for the matmuls of one decode step;
``python benchmarks/quantize.py --kernels --models --threads 2`` times the M = 1 and M = 8 rows):

    ============  ===================  =====================
    rows (M)      ``F.linear``, 2 thr  split in 2, 2 threads
    ============  ===================  =====================
    1             30.3                 17.9
    8             61.6                 42.4
    64            171                  137
    ============  ===================  =====================

and with one thread both take the same time. So, under ``torch.no_grad`` / ``inference_mode``, on CPU in
float32, with more than one thread, few rows and a weight large enough to be memory-bound, :func:`linear`
splits the weight's output rows into one block per thread (a free view of the same storage) and runs the
blocks as one ``torch.bmm``, which PyTorch parallelises over the blocks. The result is the same product
(each output element is still one dot product of a row of ``x`` with a row of ``weight``); only which thread
computes it changes. Training (gradients on), other dtypes and devices, and big batches go to ``F.linear``
unchanged; bf16 and the int8 layers already thread through oneDNN / fbgemm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Below ~2^19 weights (2 MB in fp32) a layer stays in cache and one thread is already fast: splitting it
# costs more than it saves (measured: 512 x 512 slower split, 768 x 768 twice as fast).
MIN_SPLIT_WEIGHTS = 1 << 19
# Up to this many rows the split was faster on every GPT-2-small layer (at 64 rows: 137 vs 171 ms per step);
# beyond it (long prompts, big batches) MKL's own gemm threading takes over.
MAX_SPLIT_ROWS = 64


def _split_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight``'s rows in ``blocks`` blocks computed by one ``bmm``.

    x: (..., in); weight: (out, in); returns (..., out).
    """
    out_features, in_features = weight.shape
    rows = out_features // blocks * blocks  # the remainder (< blocks rows) goes through F.linear
    x2 = x.reshape(1, -1, in_features)  # (1, M, in)
    w = weight[:rows].view(blocks, rows // blocks, in_features)  # (blocks, out/blocks, in): a view, no copy
    y = torch.bmm(x2.expand(blocks, -1, -1), w.transpose(1, 2))  # (blocks, M, out/blocks)
    y = y.transpose(0, 1).reshape(x2.shape[1], rows)  # (M, rows), output features back in order
    if rows < out_features:
        y = torch.cat([y, F.linear(x2[0], weight[rows:])], dim=1)
    if bias is not None:
        y = y.add_(bias)
    return y.view(*x.shape[:-1], out_features)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, split across threads for small-batch CPU inference (module docstring).

    x: (..., in); weight: (out, in); bias: (out,) or None; returns (..., out).
    """
    # Training (the common call) leaves first; under the compiler, which picks its own kernels, the thread
    # query below would break the graph.
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    threads = torch.get_num_threads()
    if (threads > 1 and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and type(weight) in (torch.Tensor, nn.Parameter) and weight.is_contiguous()
            and weight.numel() >= MIN_SPLIT_WEIGHTS and weight.shape[0] >= threads
            and 0 < x.numel() <= MAX_SPLIT_ROWS * x.shape[-1]):
        return _split_rows(x, weight, bias, threads)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["Linear", "linear", "MIN_SPLIT_WEIGHTS", "MAX_SPLIT_ROWS"]
