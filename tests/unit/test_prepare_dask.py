"""prepare on Dask (issue 18): the same files as a local prepare, byte for byte; a killed worker corrupts nothing.

One LocalCluster of 2 single-threaded worker processes serves the whole module (starting one costs seconds).
Its scheduler gives a task up after 2 worker deaths (``allowed-failures`` 1), so the test of a task that keeps
killing its workers ends quickly. Tests that need Dask skip when it is not installed; the message a user gets
without it is tested either way.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from llmcore.cli import main
from llmcore.data import build_tokenizer, prepare, read_text
from llmcore.data.dask_prepare import check_spec
from llmcore.errors import ConfigError, DataError
from llmcore.tokenizer import ByteTokenizer
from llmcore.training.run import RunConfig

SHARD = 20_000  # bytes per part: the big file below is cut into several
CHUNK = 3_000  # characters per tokenizer call: several chunks per part


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Several compressed files, a JSONL file, and one plain file larger than the shard size."""
    text = read_text()[:150_000]
    d = tmp_path_factory.mktemp("corpus")
    with gzip.open(d / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text[:12_000])
    with lzma.open(d / "b.txt.xz", "wt", encoding="utf-8") as f:
        f.write(text[12_000:20_000] + " (no newline at the end)")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(0, 8_000, 800):
            f.write(json.dumps({"id": i, "text": text[20_000 + i:20_800 + i]}) + "\n")
    files = [d / "a.txt.gz", d / "b.txt.xz", d / "c.jsonl.gz"]
    try:
        import zstandard

        (d / "d.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text[28_000:34_000].encode()))
        files.append(d / "d.txt.zst")
    except ImportError:
        pass
    (d / "big.txt").write_text(text[34_000:], encoding="utf-8")  # ~116 kB: 6 parts
    return [*files, d / "big.txt"]


@pytest.fixture(scope="module")
def sp(corpus):
    return build_tokenizer("sp", corpus, vocab_size=400)


def listing(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (but the directory's ownership marker) with its bytes."""
    return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*"))
            if f.is_file() and f.name != ".llmcore-run"}


def test_dask_prepare_equals_local_prepare_byte_for_byte(client, corpus, sp, tmp_path):
    kw = dict(shard_bytes=SHARD, chunk_chars=CHUNK)
    serial = prepare(corpus, sp, tmp_path / "serial", num_workers=0, **kw)
    pooled = prepare(corpus, sp, tmp_path / "pooled", num_workers=2, **kw)
    on_dask = prepare(corpus, sp, tmp_path / "dask", dask=client, **kw)
    assert serial == pooled == on_dask
    files = listing(tmp_path / "serial")
    assert files == listing(tmp_path / "pooled") == listing(tmp_path / "dask")  # names and bytes, meta.json too
    # shards follow the inputs: one per compressed file, several for the big file, the cut part in two
    shards = on_dask["shards"]
    n_big = len(range(0, (corpus[-1]).stat().st_size, SHARD))
    assert len(shards["train"]) + len(shards["val"]) == len(corpus) - 1 + n_big + 1
    assert [e["source"] for e in shards["train"]][:len(corpus) - 1] == list(range(len(corpus) - 1))
    assert shards["train"][-1]["range"] == shards["val"][0]["range"]  # the part the train/val cut falls in
    assert on_dask["n_chars"] == len(read_text(corpus)) and on_dask["n_docs"] == len(corpus) - 1 + 10
    assert on_dask["n_train_chars"] == int(on_dask["n_chars"] * 0.9)


def test_a_bad_input_fails_on_a_worker_as_it_fails_locally(client, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1") * 10)
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text: invalid byte 0xe9 at byte offset 3"):
        prepare([bad], ByteTokenizer(), tmp_path / "out", dask=client)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_cli_prepare_on_a_scheduler_address(client, corpus, tmp_path, capsys):
    address = client.scheduler.address
    base = ["prepare", "--data", *map(str, corpus), "--tokenizer", "byte", "--shard-size", "20K", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "dask"), "--dask", address]) == 0
    assert "shards) in" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "local"), "--workers", "0"]) == 0
    assert listing(tmp_path / "dask") == listing(tmp_path / "local")
    assert len(json.loads((tmp_path / "dask" / "meta.json").read_text())["shards"]["train"]) > len(corpus)


def test_train_prepares_its_own_data_on_dask(client, corpus, tmp_path):
    common = ["train", "--data", *map(str, corpus[:2]), "--tokenizer", "byte", "--preset", "debug", "--max-steps", "2",
              "--batch-size", "2", "--eval-interval", "2", "--device", "cpu", "--no-progress",
              "--set", "max_seq_len=16", "--set", "num_samples=0"]
    assert main([*common, "--out", str(tmp_path / "a"), "--dask", client.scheduler.address]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    assert listing(tmp_path / "a" / "data") == listing(tmp_path / "b" / "data")
    metrics = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in "ab"]
    assert [json.loads(m).get("val_loss") for m in metrics[0]] == [json.loads(m).get("val_loss") for m in metrics[1]]


class KillingTokenizer(ByteTokenizer):
    """Bytes, but a worker process that encodes with it SIGKILLs itself at its second chunk: once in all
    (the first to do so leaves ``marker``), or every time (``always``). Never the test process itself."""

    def __init__(self, marker: Path, always: bool = False) -> None:
        super().__init__()
        self.marker, self.always, self.home, self.calls = str(marker), always, os.getpid(), 0

    def encode(self, text, add_bos=False, add_eos=False):
        self.calls += 1
        if os.getpid() != self.home and self.calls >= 2 and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)  # mid-task: the part's first chunk is already written
        return super().encode(text, add_bos=add_bos, add_eos=add_eos)


@pytest.fixture
def by_value():
    """Ship the test's tokenizer class itself to the workers (they cannot import this test module)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_worker_killed_mid_task_corrupts_nothing(client, corpus, tmp_path, by_value):
    kw = dict(shard_bytes=SHARD, chunk_chars=CHUNK)
    expected = prepare(corpus, ByteTokenizer(), tmp_path / "local", num_workers=0, **kw)
    client.wait_for_workers(2)
    marker = tmp_path / "killed"
    meta = prepare(corpus, KillingTokenizer(marker), tmp_path / "dask", dask=client, **kw)
    assert marker.exists()  # a worker did die; the scheduler ran its task again on another
    assert meta == expected
    # every shard complete, meta.json the same, no staging directory or temporary file left behind
    assert listing(tmp_path / "dask") == listing(tmp_path / "local")


def test_workers_that_keep_dying_fail_the_run_without_an_index(client, corpus, tmp_path, by_value):
    out = tmp_path / "out"
    prepare(corpus[:1], ByteTokenizer(), out)  # an earlier output, which must survive the failed run
    before = listing(out)
    client.wait_for_workers(2)
    with pytest.raises(DataError, match=r"Dask workers died each time they ran the task for .*nothing was indexed"):
        prepare(corpus, KillingTokenizer(tmp_path / "killed", always=True), out, dask=client,
                shard_bytes=SHARD, chunk_chars=CHUNK)
    assert listing(out) == before  # the old index and shards as they were; nothing staged is left


# ------------------------------------------------------------------------------------------------ no Dask needed
def test_without_dask_the_cli_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    (tmp_path / "a.txt").write_text("some text\n" * 50, encoding="utf-8")
    assert main(["prepare", "--data", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--dask",
                 "local:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'llmcore[dask]'" in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="llmcore\\[dask\\]"):
        prepare("some text\n" * 50, ByteTokenizer(), tmp_path / "out2", dask="local:2")


@pytest.mark.parametrize("spec, message", [
    ("local:0", "local:N with N >= 1"), ("local", "local:N with N >= 1"), ("my-cluster", "not a scheduler address"),
])
def test_bad_dask_spec_is_a_one_line_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        check_spec(spec)
    with pytest.raises(ConfigError, match=message):
        RunConfig(dask=spec)
    assert check_spec("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786" and check_spec("local:3") == "local:3"


def test_worker_count_never_changes_the_shards(corpus, tmp_path):
    """The layout is a function of the inputs: the same files for 1 and 3 local processes, and a split is
    the concatenation of its shards."""
    a = prepare(corpus, ByteTokenizer(), tmp_path / "a", num_workers=0, shard_bytes=SHARD, chunk_chars=CHUNK)
    prepare(corpus, ByteTokenizer(), tmp_path / "b", num_workers=3, shard_bytes=SHARD, chunk_chars=CHUNK)
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    ids = np.concatenate([np.fromfile(tmp_path / "a" / e["file"], dtype=np.uint16)
                          for s in ("train", "val") for e in a["shards"][s]])
    eos = ByteTokenizer().eos_id
    assert (ids == eos).sum() == a["n_docs"] - 1  # one eos between documents
    assert bytes(ids[ids != eos].astype(np.uint8)) == read_text(corpus).encode("utf-8")
