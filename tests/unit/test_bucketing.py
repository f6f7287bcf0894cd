"""Length bucketing in ExampleDataset.sample_batch: less padding, same selection probabilities, off by default."""

from __future__ import annotations

import pytest
import torch

from llmcore import DataError
from llmcore.data import ExampleDataset
from llmcore.finetune import PairDataset
from llmcore.tokenizer import ByteTokenizer
from llmcore.translation import Seq2SeqPairs


class Ragged(ExampleDataset):
    """Example i has length 1 + (i * 7) % 40: a spread of lengths in shuffled order."""

    def __init__(self, n: int = 40, bucket: int = 1) -> None:
        self.lengths = [1 + (i * 7) % 40 for i in range(n)]
        self.bucket = bucket

    def __len__(self) -> int:
        return len(self.lengths)

    def example_length(self, i: int) -> int:
        return self.lengths[i]

    def collate(self, indices):
        return torch.tensor(list(indices)), torch.tensor([self.lengths[i] for i in indices])


def padding_fraction(data: Ragged, draws: int = 300, batch_size: int = 8) -> float:
    g = torch.Generator().manual_seed(0)
    padded = real = 0
    for _ in range(draws):
        _, lengths = data.sample_batch(batch_size, g)
        padded += int(lengths.max()) * len(lengths)
        real += int(lengths.sum())
    return 1 - real / padded


def test_bucketing_cuts_padding():
    plain, bucketed = padding_fraction(Ragged(bucket=1)), padding_fraction(Ragged(bucket=8))
    assert plain > 0.4 and bucketed < plain / 3, (plain, bucketed)


def token_weighted_mean(data: Ragged, draws: int, seed: int) -> float:
    """Average over draws of a batch's per-token mean of a per-example value (here: the example's length).

    This is what the Trainer's loss does with a per-example quantity, so it stands for the expected gradient.
    """
    g, total = torch.Generator().manual_seed(seed), 0.0
    for _ in range(draws):
        _, lengths = data.sample_batch(8, g)
        value = lengths.double()  # any per-example value; the length makes a length bias show up
        total += float((lengths * value).sum() / lengths.sum())
    return total / draws


def test_bucketing_keeps_the_per_token_objective():
    # Bucketed batches must estimate the same per-token mean as plain random batches; a uniform choice of
    # slice would give short examples the weight of long ones and pull this mean far down (about 21 vs 27).
    plain = token_weighted_mean(Ragged(bucket=1), 3000, seed=1)
    bucketed = token_weighted_mean(Ragged(bucket=8), 3000, seed=2)
    lengths = Ragged().lengths
    exact = sum(n * n for n in lengths) / sum(lengths)  # the per-token mean over the whole set: 27.0
    # (plain batches of 8 sit a little low: a ratio of sums over few examples is biased, about 26.3)
    assert abs(bucketed - exact) < 0.6 and abs(plain - exact) < 1.2, (plain, bucketed, exact)


def test_every_example_is_drawn():
    data, g = Ragged(bucket=8), torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(300):
        seen.update(data.sample_batch(8, g)[0].tolist())
    assert seen == set(range(40))


def test_bucket_one_draws_exactly_as_before():
    data = Ragged(bucket=1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert data.sample_batch(8, g1)[0].tolist() == torch.randint(40, (8,), generator=g2).tolist()
    assert torch.equal(g1.get_state(), g2.get_state())


def test_real_datasets_bucket():
    tok = ByteTokenizer(specials=("<bos>", "<eos>", "<pad>", "<2zh>"))
    rows = [("a" * n, "好" * (n % 5 + 1)) for n in range(1, 60)]
    for data in (Seq2SeqPairs(rows, tok, src_len=64, tgt_len=32, bucket=6),
                 PairDataset(rows, tok, tgt_lang_tag="<2zh>", bucket=6)):
        g = torch.Generator().manual_seed(0)
        batch = data.sample_batch(4, g)
        assert {k: v.shape[0] for k, v in batch.items()} == dict.fromkeys(batch, 4) and "labels" in batch


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_bucket(bad):
    with pytest.raises(DataError, match="bucket="):
        Ragged(bucket=bad)


def test_bucketing_needs_lengths():
    class NoLengths(ExampleDataset):
        def __len__(self) -> int:
            return 3

    NoLengths().bucket = 1
    with pytest.raises(DataError, match="example_length"):
        NoLengths().bucket = 4
