"""scripts/build_parallel_data.py: the offline build of the shipped translation data (cleaning rules, the
dictionary, byte-identical rebuilds). The script is not part of the package; it is loaded from its file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llmcore.translation import Pair, load_attribution, load_parallel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_parallel_data.py"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_parallel_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def test_build_parallel_data_applies_the_cleaning_rules(build, tmp_path, capsys):
    shared = tmp_path / "shared"
    cols = ["book", "chapter", "verse", "en_web", "en_kjv", "en_bbe", "zh_cuv", "es_rv1909", "fr_lsg1910"]
    en, zh = "In the beginning God created the heavens.", "起初神创造天地。"  # ratio ~0.2
    verses = [["Gen", "1", str(v), en, "", "", zh, "", ""] for v in range(1, 11)]
    verses[3][6] = ""  # CUV merged verse 4 into verse 3: verses 3 and 4 go
    verses[6][3] = ""  # verse 7: empty English
    verses[8][6] = "起" * 60  # verse 9: length-ratio outlier
    verses.append(["John", "7", "53", en, "", "", "", "", ""])  # merged into the NEXT verse
    verses.append(["John", "8", "1", en, "", "", zh, "", ""])
    verses.append(["John", "8", "2", en, "", "", zh, "", ""])
    _write(shared / "bible-parallel" / "verses.tsv", cols, verses)
    _write(shared / "hsk-sentences" / "hsk_en_zh.tsv", ["id", "hsk_level", "topic", "en", "zh_hans", "zh_hant", "pinyin"],
           [["hsk1-1", "1", "g", "Hello!", "你好！", "", ""], ["hsk1-2", "1", "g", "Hello!", "你好！", "", ""]])
    _write(shared / "tatoeba-cmn" / "tatoeba_en_zh.tsv", ["en", "zh_hans", "zh_orig", "attribution"],
           [["\ufeffHi.", "嗨。", "嗨。", "#1 (a) & #2 (b)"], ["Hi.", "嗨。", "嗨。", "#1 (a) & #3 (c)"],
            ["Hi.", "你好。", "你好。", "#1 (a) & #4 (d)"]])
    _write(shared / "cc-cedict" / "cedict.tsv", ["traditional", "simplified", "pinyin", "english"],
           [["神", "神", "shen2", "God,deity"], ["天地", "天地", "tian1 di4", "heaven and earth,world"]])
    stats = build.build_parallel_data(shared, tmp_path / "out")
    kept = {p.id for p in load_parallel(None, data_dir=tmp_path / "out")}
    bible = {i for i in kept if i.startswith("bible")}
    assert bible == {"bible:Gen.1.1", "bible:Gen.1.2", "bible:Gen.1.5", "bible:Gen.1.6", "bible:Gen.1.8",
                     "bible:Gen.1.10", "bible:John.8.2"}
    assert stats["dropped"] == {"empty_zh": 2, "merged_verse": 2, "empty_en": 1, "length_ratio": 1}
    assert {i for i in kept if i.startswith("hsk")} == {"hsk:hsk1-1"}  # duplicate pair removed
    tatoeba = [p for p in load_parallel(None, data_dir=tmp_path / "out") if p.source == "tatoeba"]
    assert [(p.id, p.en, p.zh) for p in tatoeba] == [("tatoeba:1", "Hi.", "嗨。"), ("tatoeba:3", "Hi.", "你好。")]
    assert load_attribution(tmp_path / "out") == {"tatoeba:1": "#1 (a) & #2 (b)", "tatoeba:3": "#1 (a) & #4 (d)"}
    assert (tmp_path / "out" / "en_zh_dict.tsv.xz").is_file()
    # Same inputs, same bytes.
    first = (tmp_path / "out" / "en_zh_pairs.tsv.xz").read_bytes()
    assert build.main([str(shared), str(tmp_path / "again")]) == 0  # the command line, same bytes
    assert (tmp_path / "again" / "en_zh_pairs.tsv.xz").read_bytes() == first
    assert '"empty_zh": 2' in capsys.readouterr().out
    assert build.main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "not found; pass the shared data directory" in capsys.readouterr().err


def test_build_dictionary_prefers_co_occurring_candidates(build, tmp_path):
    path = tmp_path / "cedict.tsv"
    _write(path, ["traditional", "simplified", "pinyin", "english"],
           [["光", "光", "guang1", "light,ray"], ["輕", "轻", "qing1", "light (not heavy)"],
            ["好", "好", "hao3", "good,surname Hao"], ["李", "李", "li3", "surname Li"]])
    pairs = [Pair(f"x:{i}", "hsk", "good light", "好光") for i in range(3)]
    d = build.build_dictionary(path, pairs)
    assert d == {"light": "光", "good": "好"}
