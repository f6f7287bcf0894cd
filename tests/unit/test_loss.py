"""lm_loss: token-weighted mean over non-ignored labels, label smoothing, z-loss, fp32, sum reduction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcore.errors import ConfigError
from llmcore.training import count_targets, lm_loss, token_accuracy


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, :3] = -100  # uneven counts per row: the mean must weight tokens, not rows
    labels[2, 4] = -100
    return logits, labels


def test_mean_is_token_weighted_cross_entropy(batch):
    logits, labels = batch
    keep = labels != -100
    manual = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(lm_loss(logits, labels), manual)
    torch.testing.assert_close(lm_loss(logits, labels), F.cross_entropy(logits.view(-1, 11), labels.view(-1)))


def test_sum_reduction_times_count_is_mean(batch):
    logits, labels = batch
    n = count_targets(labels)
    assert int(n) == 11
    torch.testing.assert_close(lm_loss(logits, labels, reduction="sum") / n, lm_loss(logits, labels))


def test_label_smoothing_matches_manual(batch):
    logits, labels = batch
    eps, V = 0.1, logits.shape[-1]
    keep = labels != -100
    logp = torch.log_softmax(logits, -1)[keep]  # (N, V)
    target = torch.full_like(logp, eps / V)
    target[torch.arange(len(logp)), labels[keep]] += 1 - eps
    manual = -(target * logp).sum(-1).mean()
    torch.testing.assert_close(lm_loss(logits, labels, label_smoothing=eps), manual)


def test_z_loss_adds_squared_log_normaliser(batch):
    logits, labels = batch
    keep = labels != -100
    z = torch.logsumexp(logits, -1)[keep].pow(2).mean()
    torch.testing.assert_close(lm_loss(logits, labels, z_loss=1e-3), lm_loss(logits, labels) + 1e-3 * z)


def test_bf16_logits_computed_in_fp32(batch):
    logits, labels = batch
    out = lm_loss(logits.bfloat16(), labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, lm_loss(logits.bfloat16().float(), labels))


def test_all_ignored_gives_zero_with_grad():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = lm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_bad_inputs_raise(batch):
    logits, labels = batch
    with pytest.raises(ConfigError, match="reduction"):
        lm_loss(logits, labels, reduction="none")
    with pytest.raises(ConfigError, match="labels"):
        lm_loss(logits, labels[:, :-1])
    with pytest.raises(ConfigError, match="label_smoothing"):
        lm_loss(logits, labels, label_smoothing=1.0)


def test_token_accuracy_skips_ignored():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # argmax 1, 0, 1
    labels = torch.tensor([[1, 1, -100]])
    assert token_accuracy(logits, labels) == (1, 2)
