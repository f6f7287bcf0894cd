"""Every script in examples/ and benchmarks/ runs end to end in its quickest mode (slow: ``pytest -m slow``).

Each script runs in a subprocess, from a temporary directory, with this checkout's ``src`` first on the
import path and every output directory pointed into the temporary directory, so nothing is written to the
repository. A test checks the exit status, a line the script prints when it finished, and the files it is
meant to write. ``examples/alibi_parallel.py`` has its own test (the command-line round trip it teaches).
About 4 minutes on 2 CPU cores in all.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# script -> (arguments; {OUT} is the temporary directory), text the output must contain, files under {OUT},
# modules it needs beyond the core dependencies, timeout in seconds
SCRIPTS = {
    "examples/attention_maps.py": (["--quick", "--out-dir", "{OUT}"], "attention_zh.png",
                                   ["attention_en.png", "attention_zh.png"], ["matplotlib"], 300),
    "examples/finetune_strategies.py": (["--quick", "--out", "{OUT}"], "| LoRA r=8 |",
                                        ["results.json", "results.md"], [], 300),
    "examples/generate_zh.py": (["--quick", "--out", "{OUT}"], "sampled (temperature 0.8",
                                ["model/config.json", "model/model.safetensors", "data/meta.json"], [], 300),
    "examples/lstm_vs_transformer.py": (["--quick", "--out", "{OUT}"], "--- LSTM sample ---",
                                        ["transformer/config.json", "lstm/config.json"], [], 300),
    "examples/multimodal_shapes.py": (["--quick", "--out", "{OUT}"], "saved models, sample images and results.json",
                                      ["results.json", "results.md", "multimodal_shapes.png"], [], 300),
    "examples/overfitting.py": (["--quick", "--out", "{OUT}", "--plot", "{OUT}/overfitting.png"], "| all four |",
                                ["overfitting.png"], ["matplotlib"], 300),
    "examples/translate_en_zh.py": (["--quick", "--out", "{OUT}"], "saved models and results.json",
                                    ["results.json", "seq2seq/config.json", "decoder_only/config.json"],
                                    ["sacrebleu"], 600),
    "benchmarks/generate.py": (["--quick", "--repeats", "1"], "cached / uncached", [], ["transformers"], 300),
    "benchmarks/train.py": (["--steps", "2", "--warmup", "1"], "| HF GPT2LMHeadModel |", [], ["transformers"], 300),
    "benchmarks/tokenizer.py": (["--repeats", "1", "--vocab-size", "1000"], "list of", [], [], 300),
    "benchmarks/prepare.py": (["--size-mb", "1", "--files", "2", "--vocab-size", "1000", "--work", "{OUT}"],
                              "identical outputs: yes", [], ["distributed"], 300),
    "benchmarks/serve.py": (["--max-tokens", "4", "--requests", "2", "--concurrency", "1", "2", "--repeats", "1"],
                            "| how | concurrency |", [], ["starlette", "uvicorn", "openai"], 300),
    "benchmarks/translation_archs.py": (["--repeats", "2", "--vocab-size", "3000"], "ms/step", [], [], 300),
}
SCRIPTS |= {
    "benchmarks/decode.py": (["--layers", "2", "--new", "8", "--repeats", "1", "--batches", "2", "--threads", "1"],
                             "int8 / transformers fp32", [], ["transformers"], 300),
    "benchmarks/quantize.py": (["--models", "shakespeare", "--prompts", "2", "--new", "8", "--repeats", "1"],
                               "| shakespeare |", [], [], 300),
    "benchmarks/train_gpt2.py": (["--layers", "1", "--seq", "32", "--steps", "1", "--warmup", "0", "--threads", "1",
                                  "--dtypes", "fp32"], "llmcore / nanoGPT-eq.", [], ["transformers"], 300),
    "benchmarks/train_compile.py": (["--layers", "1", "--seq", "32", "--steps", "1"], "| torch.compile (inductor) |",
                                    [], [], 300),
    "benchmarks/run.py": (["--quick", "--only", "decode", "--out", "{OUT}"], "benchmark suite finished",
                          ["decode.md"], ["transformers"], 300),
}
# tested by its own test module; the package files of ``python -m benchmarks`` (run.py is tested above)
SKIP = {"examples/alibi_parallel.py", "benchmarks/__init__.py", "benchmarks/__main__.py"}


def test_every_script_is_covered():  # fast: runs in the default suite
    scripts = {p.relative_to(ROOT).as_posix() for d in ("examples", "benchmarks") for p in (ROOT / d).glob("*.py")}
    assert scripts - SKIP - set(SCRIPTS) == set(), "add the new script's quickest mode to SCRIPTS"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_runs(script, tmp_path):
    args, expected, files, needs, timeout = SCRIPTS[script]
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{script} needs {module}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    cmd = [sys.executable, str(ROOT / script), *(a.replace("{OUT}", str(tmp_path)) for a in args)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-4000:]}"
    assert expected in proc.stdout, f"{script} did not print {expected!r}:\n{output[-4000:]}"
    missing = [f for f in files if not (tmp_path / f).is_file()]
    assert not missing, f"{script} did not write {missing} under {tmp_path}"
