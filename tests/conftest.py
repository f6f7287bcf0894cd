"""Shared fixtures: a tiny config, deterministic seeds, and restored global torch state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from llmcore import ModelConfig


@pytest.fixture(autouse=True)
def _seed_and_restore():
    """Every test starts from the same seeds on one thread and leaves torch's global state as it found it."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    # One intra-op thread: the tensors here are tiny, and on a 2-core machine several threads per op only
    # contend (a test measured 9.6 s at 2 threads, 0.25 s at 1). Tests that need more set it themselves.
    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """2 layers, d_model 32, Llama-style (RoPE, RMSNorm, SwiGLU, GQA), vocab 128."""
    return ModelConfig.from_preset("debug", vocab_size=128)


@pytest.fixture
def tiny_gpt2_config() -> ModelConfig:
    """2 layers, d_model 32, GPT-2 style (learned positions, LayerNorm, GELU, tied head), vocab 128."""
    return ModelConfig(vocab_size=128, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                       activation="gelu_tanh", pos_encoding="learned", norm="layernorm", bias=True)


@pytest.fixture
def clean_registry():
    """Architectures registered inside the test are gone after it (the table is restored as it was)."""
    from llmcore.registry import ARCHITECTURES

    ARCHITECTURES.load_builtins()  # first, so the snapshot holds the built-ins
    before = dict(ARCHITECTURES._table)
    yield
    ARCHITECTURES._table.clear()
    ARCHITECTURES._table.update(before)
