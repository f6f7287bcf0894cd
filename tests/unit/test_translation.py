"""Translation: split determinism, metrics and baselines, Trainer batches, Translator, CLI.

The offline data build (scripts/build_parallel_data.py) is tested in tests/test_build_parallel_data.py.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from llmcore import ModelConfig
from llmcore.cli import main
from llmcore.errors import ConfigError, DataError, TokenizerError
from llmcore.inputs import IGNORE_INDEX
from llmcore.models.lstm import LSTMLM
from llmcore.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from llmcore.models.transformer import TransformerLM
from llmcore.tokenizer import CharTokenizer
from llmcore.translation import (
    DictionaryBaseline,
    Pair,
    Seq2SeqPairs,
    bleu,
    chrf,
    copy_source,
    evaluate_translations,
    load_attribution,
    load_parallel,
    split_of,
)
from llmcore.translation.translator import Translator

TAGS = ("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>")
PAIRS = [("hello", "你好"), ("good morning", "早上好"), ("thank you", "谢谢你"), ("good night", "晚安")]


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer.from_text("".join(s + t for s, t in PAIRS) + " ?,.abcdefghijklmnopqrstuvwxyz", specials=TAGS)


def tiny_seq2seq(tok) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=24, d_model=32, n_layers=1,
                                            n_heads=4, pos_encoding="learned")).eval()


# ------------------------------------------------------------------------------------------- data
def test_shipped_splits_are_deterministic_and_disjoint():
    splits = {s: load_parallel(s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [55695, 1324, 2340]  # the README's table; changes are deliberate
    ids = [p.id for v in splits.values() for p in v]
    assert len(ids) == len(set(ids)) == len(load_parallel(None))
    assert load_parallel("test") == splits["test"]  # same call, same answer
    counts = {s: sum(p.source == s for p in splits["test"]) for s in ("bible", "hsk", "tatoeba")}
    assert counts == {"bible": 502, "hsk": 223, "tatoeba": 1615}
    # Whole Bible chapters, and every translation of one English sentence (from HSK or Tatoeba), on one side.
    side = {}
    for name, pairs in splits.items():
        for p in pairs:
            assert side.setdefault(p.split_key, name) == name
    assert Pair("hsk:1", "hsk", "How are  you?", "a").split_key == Pair("tatoeba:9", "tatoeba", "how are you?", "b").split_key
    assert len(load_attribution()) == sum(p.source == "tatoeba" for p in load_parallel(None))
    assert "tatoeba.org" in load_attribution()["tatoeba:1"]
    # The rule is a pure function of the key, independent of file order or of the rest of the data.
    assert split_of(Pair("bible:Gen.1.1", "bible", "x", "y")) == split_of(Pair("bible:Gen.1.31", "bible", "a", "b"))
    with pytest.raises(DataError, match="Unknown split"):
        load_parallel("dev")


# ------------------------------------------------------------------------------------------- metrics
def test_metrics_and_baselines():
    refs = ["你好，很高兴认识你。", "谢谢你！"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert chrf(refs, refs) == pytest.approx(100.0)
    assert bleu(copy_source(["Hello.", "Thanks!"]), refs) < 5
    with pytest.raises(DataError, match="pair up"):
        bleu(["a"], refs)
    base = DictionaryBaseline({"hello": "你好", "thank": "谢谢", "you": "你", "be": "是"})
    assert base.translate("Hello, thank you!") == "你好，谢谢你！"
    assert base(["They were thanked."]) == ["是谢谢。"]  # irregular and suffixed forms, unknown words dropped
    shipped = DictionaryBaseline()
    assert shipped.translate("God") == "神"


def test_missing_sacrebleu_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(ImportError, match=r"llmcore\[eval\]"):
        bleu(["a"], ["a"])


# ------------------------------------------------------------------------------------------- training
def test_seq2seq_pairs_train_with_the_trainer(tok):
    from llmcore.training import TrainConfig, Trainer, lm_loss

    data = Seq2SeqPairs(PAIRS * 4, tok, src_len=16, tgt_len=8)
    batch = data.collate([0, 1])
    assert list(batch) == ["tgt_ids", "src_ids", "src_mask", "labels"]
    src0 = tok.encode(PAIRS[0][0]) + [tok.eos_id]
    assert batch["src_ids"][0, :len(src0)].tolist() == src0
    assert batch["src_mask"][0].tolist() == [1] * len(src0) + [0] * (batch["src_ids"].shape[1] - len(src0))
    tgt0 = tok.encode(PAIRS[0][1])
    assert batch["tgt_ids"][0, :1 + len(tgt0)].tolist() == [tok.token_to_id("<2zh>")] + tgt0
    assert batch["labels"][0, :len(tgt0) + 1].tolist() == tgt0 + [tok.eos_id]
    assert batch["labels"].shape[1] > len(tgt0) + 1 and (batch["labels"][0, len(tgt0) + 1:] == IGNORE_INDEX).all()
    model = tiny_seq2seq(tok)
    cfg = TrainConfig(max_steps=100, batch_size=8, lr=5e-3, warmup_steps=0, eval_interval=30, eval_batches=2,
                      progress=False, num_samples=0, label_smoothing=0.1, device="cpu")
    trainer = Trainer(model, cfg, data, val_data=data)
    # The model is called with the batch's keywords, no adapter: evaluation equals the hand-computed loss.
    one = data.collate(range(8))
    with torch.no_grad():
        model.eval()
        logits = model(one["tgt_ids"], src_ids=one["src_ids"], src_mask=one["src_mask"])
    expected = float(lm_loss(logits, one["labels"]))
    assert trainer.evaluate(data, max_batches=1)["val_loss"] == pytest.approx(expected, rel=1e-6)
    before = trainer.evaluate(data)["val_loss"]
    summary = trainer.fit()
    assert summary["final_val_loss"] < 0.5 < before
    assert Translator(model, tok).translate([s for s, _ in PAIRS]) == [t for _, t in PAIRS]


# ------------------------------------------------------------------------------------------- translator / CLI
def test_memory_model_reads_exactly_the_sources_it_was_trained_on(monkeypatch):
    """A model trained on memory-augmented sources gets, from the Translator, the ids Seq2SeqPairs built for
    training from the same augmented text; the match is cut silently, the sentence itself is held to the budget."""
    from llmcore.tokenizer import SentencePieceTokenizer
    from llmcore.translation import TranslationMemory
    from llmcore.translation.fuzzy import FUZZY_TAGS, augment_sources

    tok = SentencePieceTokenizer.train([s for p in PAIRS for s in p] * 5 + ["abcdefghijklmnopqrstuvwxyz ?,."],
                                       vocab_size=320, model_type="bpe",
                                       user_defined_symbols=["<2en>", "<2zh>", *FUZZY_TAGS])
    memory = TranslationMemory(PAIRS, keys=[s for s, _ in PAIRS])
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=48, d_model=32, n_layers=1,
                                             n_heads=4, pos_encoding="learned",
                                             extra={"translation": {"memory": "shipped-train"}})).eval()
    seen = []
    monkeypatch.setattr(Translator, "_translate_batch", lambda self, batch, *a: seen.extend(batch) or [""] * len(batch))
    texts = ["good night", "thank you"]
    Translator(model, tok, memory=memory).translate(texts)
    train = Seq2SeqPairs(list(zip(augment_sources(memory, texts), ["x", "x"])), tok, src_len=47)
    assert sorted(seen) == sorted(train.src) and all(tok.token_to_id("<fm4>") in s for s in seen)
    with warnings.catch_warnings():  # a long match is cut without a word: the user's sentence fits
        warnings.simplefilter("error")
        Translator(model, tok, memory=TranslationMemory([("good night", "晚安" * 40)])).translate(["good night"])
    with pytest.raises(ConfigError, match="shipped-train"):
        model.config.extra["translation"]["memory"] = "my-own"
        Translator(model, tok, memory=memory)


def test_translator_errors_and_truncation(tok):
    model = tiny_seq2seq(tok)
    no_tag = CharTokenizer.from_text("helo你好", specials=("<bos>", "<eos>", "<pad>"))
    with pytest.raises(TokenizerError, match="<2zh>"):
        Translator(model, no_tag)
    tr = Translator(model, tok)
    with pytest.raises(DataError, match="Input 2 is empty"):
        tr.translate(["hello", "  "])
    long = "hello " * 10
    with pytest.raises(DataError, match="source context"):
        tr.translate([long], too_long="error")
    with pytest.warns(UserWarning, match="only the first 23"):
        out = tr.translate([long, "hello"], max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    # A decoder-only model builds PairDataset's prompt and continues it.
    lm = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, max_seq_len=48)).eval()
    lm.config.extra["translation"] = {"template": "{src}"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(Translator(lm, tok).translate(["hello", "good night"], num_beams=2, max_new_tokens=4)) == 2


@pytest.mark.parametrize("saved, match", [
    ({"tgt_tag": "<2zh>"}, r"unknown key 'tgt_tag'.*src_lang_tag, tgt_lang_tag, template"),
    ({"template": 3}, r"template=3 is not a string"),
    ("<2zh>", "not a dict"),
])
def test_saved_translation_settings_are_checked(tok, saved, match):
    lm = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, extra={"translation": saved}))
    with pytest.raises(ConfigError, match=match):
        Translator(lm, tok)


def test_lstm_translator_batched_equals_one_at_a_time_and_reloads(tok, tmp_path):
    # The LSTM baseline of the decoder-only route: left-padded batches must not change its translations
    # (padding leaves the recurrent state alone), and a saved LSTMLM directory loads as a translator.
    torch.manual_seed(0)
    lstm = LSTMLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=48, d_model=32, n_heads=1, n_layers=2,
                              extra={"translation": {"template": "{src}"}})).eval()
    tr, srcs = Translator(lstm, tok), ["hello", "good night", "thank you", "good morning"]
    batched = tr.translate(srcs, num_beams=2, max_new_tokens=6)
    assert batched == [tr.translate(s, num_beams=2, max_new_tokens=6)[0] for s in srcs]
    assert any(batched)
    lstm.save_pretrained(tmp_path / "lstm", tokenizer=tok)
    assert Translator.from_pretrained(tmp_path / "lstm").translate(srcs, num_beams=2, max_new_tokens=6) == batched


def test_cli_translate(tok, tmp_path, capsys):
    model = tiny_seq2seq(tok)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    assert main(["translate", "--model", str(tmp_path / "m"), "--max-new-tokens", "4", "hello", "good night"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    lm = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, max_seq_len=48))
    lm.save_pretrained(tmp_path / "lm", tokenizer=tok)  # a decoder-only directory is detected from config.json
    lines = tmp_path / "stdin.txt"
    lines.write_text("hello\ngood night\n", encoding="utf-8")
    assert main(["translate", "--model", str(tmp_path / "lm"), "--input", str(lines), "--num-beams", "2",
                 "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    (tmp_path / "in.txt").write_text("hello\n\nthank you\n", encoding="utf-8")
    assert main(["translate", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.txt")]) == 2
    assert "Input line 2 is empty" in capsys.readouterr().err
    CharTokenizer.from_text("helo", specials=("<bos>", "<eos>", "<pad>")).save(tmp_path / "m" / "tokenizer")
    assert main(["translate", "--model", str(tmp_path / "m"), "hello"]) == 2
    assert "target-language tag '<2zh>'" in capsys.readouterr().err


def test_cli_eval_translate(tok, tmp_path, capsys, monkeypatch):
    import json

    import llmcore.translation.data as data

    # The memory baselines index the shipped training split (10 s); a fiftieth of it shows the same wiring.
    full = data.load_parallel
    monkeypatch.setattr(data, "load_parallel", lambda split, **kw: full(split, **kw)[::50])
    model = tiny_seq2seq(tok)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("en\tzh\n" + "".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    hyp_file = tmp_path / "hyps.txt"
    assert main(["eval", "--task", "translate", "--model", str(tmp_path / "m"), "--data", str(pairs),
                 "--num-beams", "2", "--no-repeat-ngram-size", "2", "--baselines", "--hypotheses", str(hyp_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{pairs}: 4 pairs")
    rows = [json.loads(line) for line in lines[1:]]
    assert [r["system"] for r in rows[:4]] == [str(tmp_path / "m"), "copy source", "CC-CEDICT word lookup",
                                               "translation memory"]
    assert rows[4]["system"].startswith("memory + dictionary (cosine >= ")
    # The printed scores are those of the model's own translations, which were written to --hypotheses.
    hyps = hyp_file.read_text(encoding="utf-8").splitlines()
    assert hyps == Translator(model, tok).translate([s for s, _ in PAIRS], num_beams=2, no_repeat_ngram_size=2)
    for h in hyps:  # the option reached the decoder: no token bigram occurs twice
        ids = tok.encode(h)
        assert len(set(zip(ids, ids[1:]))) == len(ids) - 1 or len(ids) < 2, h
    expected = evaluate_translations(hyps, [t for _, t in PAIRS])
    assert rows[0]["bleu"] == round(expected["bleu"], 2) and rows[0]["chrf"] == round(expected["chrf"], 2)
    assert rows[1] == {"system": "copy source", "bleu": 0.0, "chrf": 0.0}
    assert main(["eval", "--task", "translate", "--model", str(tmp_path / "m"), "--data", str(pairs),
                 "--src-col", "english"]) == 2
    assert "english" in capsys.readouterr().err
    assert main(["eval", "--task", "translate", "--model", str(tmp_path / "m"), "--data", str(pairs),
                 str(pairs)]) == 2
    assert "one pair file" in capsys.readouterr().err
    assert main(["eval", "--task", "translate", "--model", str(tmp_path / "m"), "--no-repeat-ngram-size", "-1"]) == 2
    assert "--no-repeat-ngram-size -1 is invalid: it must be an integer >= 0" in capsys.readouterr().err


def test_cli_eval_marks_baselines_scored_on_the_split_they_were_fitted_on(tmp_path, capsys, monkeypatch):
    import json

    import llmcore.translation.data as data

    full = data.load_parallel
    monkeypatch.setattr(data, "load_parallel", lambda split, **kw: full(split, **kw)[::50])
    val = data.load_parallel("validation")
    chars = CharTokenizer.from_text("".join(p.en + p.zh for p in val), specials=TAGS)  # covers what is scored
    tiny_seq2seq(chars).save_pretrained(tmp_path / "m", tokenizer=chars)
    assert main(["eval", "--task", "translate", "--model", str(tmp_path / "m"), "--split", "validation",
                 "--max-batches", "1", "--batch-size", "2", "--num-beams", "1", "--baselines"]) == 0
    names = [json.loads(line)["system"] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names[1:3] == ["copy source", "CC-CEDICT word lookup"]  # nothing fitted: no mark
    assert all(n.endswith("[fitted on the validation split: not held out]") for n in names[3:]), names
