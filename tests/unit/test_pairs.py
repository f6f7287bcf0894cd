"""PairDataset: the loss falls on target tokens only, the shift is right, bad files fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from llmcore import ConfigError, DataError, TokenizerError
from llmcore.finetune import PairDataset, read_pairs
from llmcore.tokenizer import ByteTokenizer

ROWS = [{"en": "Hello", "zh": "你好"}, {"en": "Good morning, teacher", "zh": "老师早"}, {"en": "Thanks", "zh": "谢谢"}]


@pytest.fixture
def tok():
    return ByteTokenizer(specials=("<bos>", "<eos>", "<pad>", "<2zh>"))


def test_labels_cover_exactly_the_target(tok):
    data = PairDataset(ROWS, tok, template="en-zh", src_col="en", tgt_col="zh", tgt_lang_tag="<2zh>")
    batch = data.collate(range(len(data)))
    assert list(batch) == ["input_ids", "labels"]
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape
    for i, row in enumerate(ROWS):
        prompt = [tok.bos_id] + tok.encode(f"English: {row['en']}\nChinese: ") + [tok.token_to_id("<2zh>")]
        target = tok.encode(row["zh"]) + [tok.eos_id]
        full = prompt + target
        n, P = len(full), len(prompt)
        assert data.ids[i] == full and data.prompt(i) == prompt
        assert x[i, :n - 1].tolist() == full[:-1]
        # y[t] labels position t + 1: -100 while predicting prompt tokens, then the target, then -100 pads
        assert y[i].tolist() == [-100] * (P - 1) + target + [-100] * (x.shape[1] - (n - 1))
        assert x[i, n - 1:].tolist() == ([tok.eos_id] + [tok.pad_id] * (x.shape[1] - n))[:x.shape[1] - n + 1]
    assert int((y != -100).sum()) == sum(len(tok.encode(r["zh"])) + 1 for r in ROWS)


def test_tsv_and_jsonl_files(tok, tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("id\ten\tzh\n1\tHello\t你好\n2\tThanks\t谢谢\n", encoding="utf-8")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS[:2]) + "\n", encoding="utf-8")
    assert read_pairs(tsv, "en", "zh") == [("Hello", "你好"), ("Thanks", "谢谢")]
    assert read_pairs(jsonl, "en", "zh")[1] == ("Good morning, teacher", "老师早")
    data = PairDataset(tsv, tok, src_col="en", tgt_col="zh", max_len=64)
    batches = list(data.iter_eval(batch_size=1))
    assert len(batches) == 2 and len(list(data.iter_eval(1, max_batches=1))) == 1
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = data.sample_batch(4, g1), data.sample_batch(4, g2)
    assert list(a) == list(b) == ["input_ids", "labels"] and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_pair_files(tok, tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("en\tchinese\nHello\t你好\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'zh'.*\['en', 'chinese'\]"):
        PairDataset(tsv, tok, src_col="en", tgt_col="zh")
    empty = tmp_path / "empty.tsv"
    empty.write_text("en\tzh\nHello\t你好\nBye\t  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.tsv:3 has an empty target"):
        PairDataset(empty, tok, src_col="en", tgt_col="zh")
    with pytest.raises(DataError, match="no column 'zh'"):
        PairDataset([{"en": "x"}], tok, src_col="en", tgt_col="zh")
    with pytest.raises(DataError, match="does not exist"):
        PairDataset(tmp_path / "missing.tsv", tok)
    with pytest.raises(TokenizerError, match="<2fr>"):
        PairDataset(ROWS, tok, src_col="en", tgt_col="zh", tgt_lang_tag="<2fr>")
    with pytest.raises(ConfigError, match="src"):
        PairDataset(ROWS, tok, template="no field", src_col="en", tgt_col="zh")


def test_too_long_policies(tok):
    rows = [("short", "ok"), ("a much longer source sentence", "and a long target sentence too")]
    with pytest.raises(DataError, match="Example 1 has .* max_len=20"):
        PairDataset(rows, tok, max_len=20)
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        assert len(PairDataset(rows, tok, max_len=20, too_long="drop")) == 1
    cut = PairDataset(rows, tok, max_len=40, too_long="truncate")
    assert len(cut.ids[1]) == 40 and cut.ids[1][-1] != tok.eos_id and cut.ids[0][-1] == tok.eos_id
