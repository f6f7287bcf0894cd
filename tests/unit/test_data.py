"""llmcore.data: corpora reading, prepare (split, dtype, parallel = in-process, flat memory), datasets, CLI."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from llmcore import cli
from llmcore.cli import main
from llmcore.data import (
    OnTheFlyTextDataset,
    TokenDataset,
    build_tokenizer,
    bundled_corpus_path,
    choose_dtype,
    collate_pad,
    prepare,
    read_text,
)
from llmcore.data.layout import split_files
from llmcore.errors import DataError, TokenizerError
from llmcore.tokenizer import ByteTokenizer, CharTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return read_text()[:60_000]


class BigVocabTokenizer:
    """A stub whose ids exceed uint16: one id per character, offset by 65,000."""

    vocab_size, bos_id, eos_id, pad_id = 70_000, None, None, None

    def encode(self, text: str) -> list[int]:
        return [65_000 + ord(c) for c in text]


def read_bin(path: Path, dtype: str = "uint16") -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r")


def read_split(directory: Path, split: str, dtype: str = "uint16") -> np.ndarray:
    """One split of a prepared directory: its shards, concatenated."""
    return np.concatenate([np.fromfile(f, dtype=dtype) for f, _ in split_files(directory, split)])


# ------------------------------------------------------------------------------------------------ corpora
def test_bundled_corpus_is_complete_shakespeare():
    assert bundled_corpus_path().name == "shakespeare.txt.gz"
    text = read_text()
    assert len(text) == 5_057_282 and text.startswith("ALL'S WELL THAT ENDS WELL")


def test_read_gz_and_directories(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first file\nno newline at end", encoding="utf-8")
    with gzip.open(tmp_path / "sub" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("second, gzipped: é 中\n")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert read_text(tmp_path / "sub" / "b.txt.gz") == "second, gzipped: é 中\n"
    # sorted, recursive, .md ignored, a newline added after a file that lacks one
    assert read_text(tmp_path) == "first file\nno newline at end\nsecond, gzipped: é 中\n"
    assert read_text([tmp_path / "a.txt", str(tmp_path / "sub")]) == read_text(tmp_path)


def _missing(d: Path) -> Path:
    return d / "missing.txt"


def _empty(d: Path) -> Path:
    (d / "e.txt").write_bytes(b"")
    return d / "e.txt"


def _dir_without_text(d: Path) -> Path:
    (d / "x").mkdir()
    (d / "x" / "a.csv").write_text("1")
    return d / "x"


@pytest.mark.parametrize(
    "setup, match",
    [(_missing, r"missing\.txt does not exist"), (_empty, r"e\.txt is empty"), (_dir_without_text, r"has no \*\.txt")],
)
def test_read_errors(tmp_path, setup, match):
    path = setup(tmp_path)
    with pytest.raises(DataError, match=match):
        read_text(path)


def test_non_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok line\n" * 3 + "café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8.*0xe9 at byte offset 27"):
        read_text(bad)
    # a 2-byte sequence cut by the 1 MiB read blocks, inside gzip: the offset in the decompressed stream
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(b"x" * ((1 << 20) - 1) + b"\xc3" + b"y")
    with pytest.raises(DataError, match=r"0xc3 at byte offset 1048575 \(after decompression\)"):
        read_text(tmp_path / "b.txt.gz")
    with pytest.raises(DataError, match="not UTF-8"):
        prepare([bad], ByteTokenizer(), tmp_path / "out")


# ------------------------------------------------------------------------------------------------ prepare
def test_dtype_choice(tmp_path):
    assert choose_dtype(65_535) == np.uint16 and choose_dtype(65_536) == np.uint32
    meta = prepare("abcdefghij" * 10, BigVocabTokenizer(), tmp_path)
    assert meta["dtype"] == "uint32"
    assert (tmp_path / "train-00000.bin").stat().st_size == 4 * meta["n_train_tokens"] == 4 * 90
    assert read_bin(tmp_path / "train-00000.bin", "uint32")[0] == 65_000 + ord("a")
    meta = prepare("abcdefghij" * 10, CharTokenizer.from_text("abcdefghij"), tmp_path)
    assert meta["dtype"] == "uint16" and (tmp_path / "train-00000.bin").stat().st_size == 2 * 90
    with pytest.raises(DataError, match="cannot hold ids up to 69999"):
        prepare("abc" * 10, BigVocabTokenizer(), tmp_path, dtype="uint16")


def test_split_is_first_90_percent_of_characters(tmp_path, shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    meta = prepare(shakespeare, tok, tmp_path, chunk_chars=777)  # many chunks, one cut inside a chunk
    n = len(shakespeare)
    train, val = read_split(tmp_path, "train"), read_split(tmp_path, "val")
    assert tok.decode(train) == shakespeare[: int(n * 0.9)]  # nanoGPT shakespeare_char's split
    assert tok.decode(val) == shakespeare[int(n * 0.9):]
    assert meta["n_train_tokens"] == len(train) and meta["n_val_tokens"] == len(val)
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert on_disk == meta and meta["vocab_size"] == tok.vocab_size and meta["tokenizer"] == "char"


@pytest.mark.parametrize("kind", ["byte", "sp"])
def test_parallel_prepare_is_byte_identical(tmp_path, shakespeare, kind):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):  # several documents, so eos ids land between them
        (data / f"{i}.txt").write_text(shakespeare[i * 15_000:(i + 1) * 15_000], encoding="utf-8")
    tok = ByteTokenizer() if kind == "byte" else build_tokenizer("sp", shakespeare, vocab_size=400)
    serial = prepare([data], tok, tmp_path / "serial", num_workers=0, chunk_chars=2_000)
    parallel = prepare([data], tok, tmp_path / "parallel", num_workers=2, chunk_chars=2_000)
    assert serial == parallel and serial["eos_between_docs"]
    names = sorted(f.name for f in (tmp_path / "serial").iterdir())
    assert names == sorted(f.name for f in (tmp_path / "parallel").iterdir())
    for name in names:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()
    ids = np.concatenate([read_split(tmp_path / "serial", s) for s in ("train", "val")])
    assert (ids == tok.eos_id).sum() == 2
    if kind == "byte":  # without eos, files equal the text they join (chunking does not change bytes)
        prepare([data], tok, tmp_path / "noeos", add_eos_between_docs=False, chunk_chars=2_000)
        both = np.concatenate([read_split(tmp_path / "noeos", s) for s in ("train", "val")])
        assert both.tolist() == ByteTokenizer().encode(read_text(data))


def test_prepare_memory_stays_flat(tmp_path):
    line = "".join(chr(97 + (i * 7) % 26) for i in range(79)).encode() + b"\n"
    big = tmp_path / "big.txt"
    big.write_bytes(line * 250_000)  # 20 MB; all ids as python ints would take > 160 MB
    tracemalloc.start()
    try:
        meta = prepare(big, ByteTokenizer(), tmp_path / "out", num_workers=0, chunk_chars=1 << 18)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert meta["n_train_tokens"] + meta["n_val_tokens"] == 20_000_000
    assert peak < 30e6, f"peak traced memory {peak / 1e6:.1f} MB"


def test_prepare_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([tmp_path / "nope.txt"], ByteTokenizer(), tmp_path / "out")
    with pytest.raises(DataError, match="val_fraction"):
        prepare("some text", ByteTokenizer(), tmp_path / "out", val_fraction=1.0)
    with pytest.raises(DataError, match="empty"):
        prepare("", ByteTokenizer(), tmp_path / "out")


# ------------------------------------------------------------------------------------------------ datasets
@pytest.fixture
def prepared(tmp_path, shakespeare) -> Path:
    prepare(shakespeare, CharTokenizer.from_text(shakespeare), tmp_path)
    return tmp_path


def test_sample_batch_shapes_shift_and_seed(prepared):
    ds = TokenDataset(prepared, block_size=64)
    data = read_split(prepared, "train")
    batch = ds.sample_batch(8, torch.Generator().manual_seed(1))
    assert list(batch) == ["input_ids", "labels"]
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    ix = torch.randint(len(data) - 64, (8,), generator=torch.Generator().manual_seed(1))  # nanoGPT get_batch
    assert torch.equal(x, torch.stack([torch.from_numpy(data[i:i + 64].astype(np.int64)) for i in ix]))
    assert torch.equal(y, torch.stack([torch.from_numpy(data[i + 1:i + 65].astype(np.int64)) for i in ix]))
    again = ds.sample_batch(8, torch.Generator().manual_seed(1))
    assert torch.equal(x, again["input_ids"]) and torch.equal(y, again["labels"])
    assert not torch.equal(x, ds.sample_batch(8, torch.Generator().manual_seed(2))["input_ids"])


def test_iter_eval_covers_split_deterministically(prepared):
    ds = TokenDataset(prepared, block_size=100, split="val")
    data = torch.from_numpy(read_split(prepared, "val").astype(np.int64))
    n, T = len(data), 100
    batches = [(b["input_ids"], b["labels"]) for b in ds.iter_eval(batch_size=7)]
    assert len(batches) == ds.num_eval_batches(7) == -(-((n - 1) // T) // 7)
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert len(ds) == len(xs) == (n - 1) // T
    assert torch.equal(xs.flatten(), data[: len(xs) * T]) and torch.equal(ys.flatten(), data[1: len(xs) * T + 1])
    again = [(b["input_ids"], b["labels"]) for b in ds.iter_eval(batch_size=7)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    capped = [(b["input_ids"], b["labels"]) for b in ds.iter_eval(7, max_batches=2)]
    assert len(capped) == 2
    # a capped evaluation samples the whole split evenly, not just its beginning
    first, last = capped[0][0][0], capped[-1][0][-1]
    assert torch.equal(first, batches[0][0][0]) and torch.equal(last, batches[-1][0][-1])
    # pad_last: every target is scored exactly once
    ys = torch.cat([b["labels"] for b in ds.iter_eval(7, pad_last=True)]).flatten()
    assert torch.equal(ys[ys != -100], data[1:])
    # sharded by rank: disjoint, and together the whole split
    shards = [torch.cat([b["input_ids"] for b in TokenDataset(prepared, 100, "val", rank=r, world_size=3).iter_eval(4)])
              for r in range(3)]
    assert sorted(map(len, shards), reverse=True) == [len(s) for s in shards] and sum(map(len, shards)) == len(xs)
    assert torch.equal(torch.stack([s[0] for s in shards]), xs[:3])


def test_token_dataset_errors(prepared):
    n_val = len(read_split(prepared, "val"))
    with pytest.raises(DataError, match=rf"has {n_val} tokens, but block_size=10000 needs at least 10001"):
        TokenDataset(prepared, block_size=10_000, split="val")
    with pytest.raises(DataError, match="nowhere does not exist"):
        TokenDataset(prepared / "nowhere", block_size=8)
    (prepared / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"meta.json not found; expected the token-shard metadata written by `llmcore prepare"):
        TokenDataset(prepared / "empty_dir", block_size=8)
    ds = TokenDataset(np.arange(20), block_size=4)
    assert len(ds) == 4 and torch.equal(ds[1]["input_ids"], torch.arange(4, 8))
    assert torch.equal(ds[1]["labels"], torch.arange(5, 9))
    with pytest.raises(DataError, match=r"Token id 19 .* outside the vocabulary \[0, 10\)"):
        TokenDataset(np.arange(20), block_size=4, vocab_size=10)
    with pytest.raises(DataError, match=r"Token id -1 .* outside the vocabulary"):
        TokenDataset(np.arange(-1, 19), block_size=4, vocab_size=32)
    vocab = int(read_split(prepared, "train").max()) + 1  # a file is scanned: the exact limit passes
    TokenDataset(prepared, block_size=8, vocab_size=vocab)
    with pytest.raises(DataError, match=rf"Token id {vocab - 1} in .*train-00000.bin"):
        TokenDataset(prepared, block_size=8, vocab_size=vocab - 1)


def test_collate_pad():
    ids, mask = collate_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask, labels = collate_pad([[1, 2, 3], [4]], pad_id=9, padding_side="left", labels=True)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert labels.tolist() == [[1, 2, 3], [-100, -100, 4]]
    _, _, labels = collate_pad([[1, 2], [3]], pad_id=0, labels=[[-100, 2], [3]])
    assert labels.tolist() == [[-100, 2], [3, -100]]
    with pytest.raises(DataError, match="pad_id"):
        collate_pad([[1, 2], [3]], pad_id=None)


def test_on_the_fly_dataset(shakespeare):
    char = CharTokenizer.from_text(shakespeare)
    ds = OnTheFlyTextDataset(shakespeare, char, block_size=32, sample=False)
    batch = ds.sample_batch(4, torch.Generator().manual_seed(0))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert char.decode(torch.cat([x[0], y[0, -1:]])) in shakespeare
    with pytest.raises(TokenizerError, match="sample"):
        OnTheFlyTextDataset(shakespeare, char, block_size=32, sample=True)
    with pytest.raises(DataError, match=rf"Token id {char.vocab_size - 1} in the tokenizer"):
        OnTheFlyTextDataset(shakespeare, char, block_size=32, sample=False, vocab_size=char.vocab_size - 1)
    sp = build_tokenizer("sp", shakespeare, vocab_size=400)
    ds = OnTheFlyTextDataset(shakespeare, sp, block_size=256, sample=True)
    a = ds.sample_batch(8, torch.Generator().manual_seed(0))["input_ids"]
    b = ds.sample_batch(8, torch.Generator().manual_seed(0))["input_ids"]
    assert a.shape == (8, 256) and not torch.equal(a, b)  # same spans, new segmentations


# ------------------------------------------------------------------------------------------------ CLI
def test_build_tokenizer_specs(tmp_path, shakespeare):
    assert isinstance(build_tokenizer("byte"), ByteTokenizer)
    char = build_tokenizer("char", shakespeare)
    assert char.vocab_size == len(set(shakespeare)) + 3
    assert build_tokenizer(char.save(tmp_path / "tok")).vocab_size == char.vocab_size
    with pytest.raises(TokenizerError, match="unknown tokenizer 'bpe'"):
        build_tokenizer("bpe", shakespeare)
    with pytest.raises(TokenizerError, match="does not apply"):
        build_tokenizer("char", shakespeare, vocab_size=100)


def test_cli_prepare(tmp_path, shakespeare, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ["llmcore.cli.prepare"])  # only this command; others land separately
    src = tmp_path / "input.txt"
    src.write_text(shakespeare, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(src), "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len(stdout) == 1 and "train" in stdout[0] and str(out) in stdout[0]
    tok = load_tokenizer(out / "tokenizer")
    assert tok.decode(read_split(out, "train")) == shakespeare[: int(len(shakespeare) * 0.9)]

    assert main(["prepare", "--data", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.txt does not exist" in err[0]


# ------------------------------------------------------------------------------------------------ shards, formats
def test_a_sharded_split_reads_as_its_concatenation(tmp_path, shakespeare):
    """Training reads any number of shards as one stream: the same batches, from the same seed, as the ids
    concatenated in one array (windows spanning two shards included)."""
    tok = CharTokenizer.from_text(shakespeare)
    meta = prepare(shakespeare, tok, tmp_path, shard_bytes=5_000, chunk_chars=1_000)
    assert len(meta["shards"]["train"]) >= 10 and len(meta["shards"]["val"]) >= 2
    for split in ("train", "val"):
        ids = read_split(tmp_path, split)
        sharded, flat = TokenDataset(tmp_path, 64, split=split), TokenDataset(ids, 64)
        assert sharded.num_tokens == len(ids) == meta[f"n_{split}_tokens"]
        for seed in range(3):
            a = sharded.sample_batch(32, torch.Generator().manual_seed(seed))
            b = flat.sample_batch(32, torch.Generator().manual_seed(seed))
            assert all(torch.equal(a[k], b[k]) for k in a)
        rows = torch.tensor([1, 5])
        a = sharded.sample_batch(8, torch.Generator().manual_seed(7), rows=rows)["input_ids"]
        assert torch.equal(a, flat.sample_batch(8, torch.Generator().manual_seed(7))["input_ids"][rows])
        assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(sharded.iter_eval(4, pad_last=True),
                                                                         flat.iter_eval(4, pad_last=True)))
        assert torch.equal(sharded[len(sharded) - 1]["input_ids"], flat[len(flat) - 1]["input_ids"])
    assert tok.decode(read_split(tmp_path, "train")) == shakespeare[: int(len(shakespeare) * 0.9)]


def test_a_directory_of_format_1_still_reads(tmp_path, shakespeare):
    """train.bin / val.bin with a meta.json without shards (an earlier llmcore's output) train as before."""
    tok = CharTokenizer.from_text(shakespeare)
    meta = prepare(shakespeare, tok, tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    for split in ("train", "val"):
        read_split(tmp_path / "new", split).tofile(old / f"{split}.bin")
    legacy = {k: v for k, v in meta.items() if k not in ("shards", "n_docs", "text_field", "shard_bytes")}
    (old / "meta.json").write_text(json.dumps({**legacy, "format_version": 1}), encoding="utf-8")
    a, b = TokenDataset(old, 32), TokenDataset(tmp_path / "new", 32)
    assert a.path == old / "train.bin" and a.num_tokens == b.num_tokens
    g = torch.Generator().manual_seed(0)
    assert torch.equal(a.sample_batch(4, g)["input_ids"], b.sample_batch(4, torch.Generator().manual_seed(0))["input_ids"])


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"]["train"][0].update(file="../../etc/x.bin"), r"shards.train\[0\].file"),
    (lambda m: m["shards"]["train"][0].update(file="val-00000.bin"), r"shards.train\[0\].file"),
    (lambda m: m["shards"]["val"][0].update(tokens=-1), r"shards.val\[0\].tokens"),
    (lambda m: m["shards"]["val"][0].update(tokens=m["shards"]["val"][0]["tokens"] + 1), "the sum of the val"),
    (lambda m: m.pop("shards"), "field 'shards'"),
])
def test_a_damaged_shard_index_is_refused(prepared, edit, message):
    meta = json.loads((prepared / "meta.json").read_text())
    edit(meta)
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        TokenDataset(prepared, 8, split="val")


def test_jsonl_globs_and_codecs(tmp_path, monkeypatch):
    import lzma

    (tmp_path / "a.jsonl").write_text('{"text": "first record"}\n\n{"text": ""}\n{"body": "x", "text": "second\\n"}\n',
                                      encoding="utf-8")
    with lzma.open(tmp_path / "b.txt.xz", "wt", encoding="utf-8") as f:
        f.write("xz text")
    assert read_text(tmp_path / "a.jsonl") == "first record\nsecond\n"  # blank lines and empty texts skipped
    assert read_text([str(tmp_path / "*.jsonl"), tmp_path / "b.txt.xz"]) == "first record\nsecond\nxz text"
    assert read_text(tmp_path) == "xz text"  # a directory: text files only
    meta = prepare([tmp_path / "a.jsonl"], ByteTokenizer(), tmp_path / "out")
    assert meta["n_docs"] == 2 and meta["eos_between_docs"]
    with pytest.raises(DataError, match=r"pattern .*nothing\*.txt.* matches no file"):
        read_text(str(tmp_path / "nothing*.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: the record at byte offset 15 has no string field 'text'"):
        prepare([tmp_path / "bad.jsonl"], ByteTokenizer(), tmp_path / "out")
    (tmp_path / "other.jsonl").write_text('{"txt": "ok"}\n', encoding="utf-8")
    assert prepare([tmp_path / "other.jsonl"], ByteTokenizer(), tmp_path / "out", text_field="txt",
                   val_fraction=0)["n_chars"] == 2
    (tmp_path / "c.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)
    with pytest.raises(DataError, match=r"c.txt.zst is zstandard-compressed; .* pip install zstandard"):
        read_text(tmp_path / "c.txt.zst")


def test_large_files_are_cut_at_line_ends(tmp_path):
    from llmcore.data.parts import plan_parts

    lines = [f"line {i} " * (i % 7 + 1) + "\n" for i in range(500)]
    big = tmp_path / "big.txt"
    big.write_text("".join(lines) + "no newline at the end", encoding="utf-8")
    parts = plan_parts([big], 1_000)
    data = big.read_bytes()
    assert len(parts) > 10 and parts[0].start == 0 and parts[-1].end == len(data) and parts[-1].file_end
    for a, b in zip(parts, parts[1:]):
        assert a.end == b.start and data[a.end - 1:a.end] == b"\n" and a.end - a.start >= 1_000
    assert plan_parts([big], 1_000) == parts  # a function of the file and the size only


def test_pool_and_dask_workers_encode_on_one_thread(shakespeare):
    from llmcore.data.parts import one_thread

    sp = build_tokenizer("sp", shakespeare, vocab_size=400)
    single = one_thread(sp)
    assert sp.num_threads == -1 and single.num_threads == 1  # a copy: the caller's tokenizer is left alone
    assert single.encode(shakespeare[:20_000]) == sp.encode(shakespeare[:20_000])
    byte = ByteTokenizer()
    assert one_thread(byte) is byte
