"""docs/guides/first-hour.md, executed: its code blocks run in order in one directory, as a reader would.

The page's commands run as written except for the budget: step counts shrink and the ``small`` preset becomes
``debug`` (``TINY`` below), and evaluation and end-of-run samples shrink (``BUDGET``), so the walk-through
checks that every step works and hands its output to the next, not what a trained model says. Python blocks
run as they are; shell lines run through the CLI's ``main()`` in this process (the same parser and code as
the console script) and must exit 0.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from llmcore.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "first-hour.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
TINY = [(r"--max-steps \d+", "--max-steps 2"), (r"--eval-interval \d+", "--eval-interval 2"),
        (r"--preset small", "--preset debug")]
# Appended to a command by its verb. Budget only, every code path still runs: 2 eval batches instead of 20
# (finetune evaluates 3 times), 8-token end-of-training samples instead of 200, `eval` over 2 batches instead
# of the whole split. Together they took about 6 s of the 15 s the walk-through took here.
BUDGET = {"train": ["--no-progress", "--set", "eval_batches=2", "--set", "sample_tokens=8"],
          "finetune": ["--no-progress", "--set", "eval_batches=2"],
          "eval": ["--max-batches", "2"]}


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]


def commands(script: str) -> list[list[str]]:
    """The ``llmcore ...`` lines of a shell block (continuations joined, comments dropped) as argv lists."""
    lines = script.replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if not line:
            continue
        assert line.startswith("llmcore "), f"the walk-through runs only llmcore commands: {line!r}"
        for pattern, repl in TINY:
            line = re.sub(pattern, repl, line)
        out.append(shlex.split(line)[1:])
    return out


def test_the_page_covers_the_whole_path():
    verbs = [argv[0] for kind, code in blocks() if kind == "bash" for argv in commands(code)]
    for verb in ("tokenizer", "prepare", "train", "generate", "finetune", "merge", "translate", "classify",
                 "eval", "convert"):
        assert verb in verbs, f"the first-hour page lost its `llmcore {verb}` step"
    assert sum(kind == "python" for kind, _ in blocks()) == 2  # make the data; load the export in transformers


def test_first_hour_walk_through(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")  # the last step loads the export with transformers
    monkeypatch.chdir(tmp_path)
    for kind, code in blocks():
        if kind == "python":
            exec(compile(code, str(PAGE), "exec"), {"__name__": "__first_hour__"})
            continue
        for argv in commands(code):
            rc = main([*argv, *BUDGET.get(argv[0], [])])
            out, err = capsys.readouterr()
            assert rc == 0, f"llmcore {shlex.join(argv)} exited {rc}:\n{err}"
            if argv[0] in ("translate", "classify", "generate"):
                assert out.strip(), f"llmcore {argv[0]} printed nothing"
    assert (tmp_path / "runs" / "en-zh-merged" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "lm-hf" / "tokenizer.model").is_file()
