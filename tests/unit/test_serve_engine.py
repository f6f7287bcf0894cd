"""The server's decoding core without HTTP: continuous batching gives each request what it gets alone.

No web framework is needed here (the engine, jobs and request parsing are plain torch / Python); the HTTP
server itself is tested in tests/test_serve.py.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.generation import generate
from llmcore.serve.batch import BatchCache
from llmcore.serve.chat import ChatTemplate, load_chat_template
from llmcore.serve.engine import Engine, QueueFull
from llmcore.serve.job import Job, SamplingParams
from llmcore.serve.protocol import APIError, Limits, parse_chat, parse_completion
from llmcore.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, max_seq_len=96)).eval()
    return model, tok


class Sink:
    """Collects a job's events; ``wait()`` until its ``done`` (or ``error``) event."""

    def __init__(self) -> None:
        self.events, self.finished = [], threading.Event()

    def __call__(self, ev):
        self.events.append(ev)
        if ev["type"] in ("done", "error"):
            self.finished.set()

    def wait(self):
        assert self.finished.wait(30), "the engine did not finish the job"
        return self

    def text(self, choice=0):
        return "".join(e["text"] for e in self.events if e["type"] == "token" and e["choice"] == choice)


def alone(model, tok, prompt, **kw):
    ids = torch.tensor([tok.encode(prompt)], dtype=torch.long)
    return generate(model, ids, tokenizer=tok, **kw)[:, ids.shape[1]:].tolist()


PROMPTS = ["hello", "a", "the quick brown fox", "xyzxyzxyzxyz", "1234567", "zz", "abcdefghij", "Q"]


def test_continuous_batching_equals_each_request_alone(lm):
    """Requests join a running batch at different steps, with different lengths and budgets: greedy tokens
    are those of generate() on each prompt alone, and the batch really was shared."""
    model, tok = lm
    engine = Engine(model, max_batch_rows=8)
    try:
        jobs, sinks = [], []
        for i, p in enumerate(PROMPTS):
            sink = Sink()
            job = Job(model, tok, tok.encode(p), SamplingParams(max_tokens=10 + 3 * i, temperature=0), sink)
            engine.submit([job])
            jobs.append(job)
            sinks.append(sink)
            time.sleep(0.003 * (i % 3))  # staggered: some join mid-way, some together
        for job, sink, p in zip(jobs, sinks, PROMPTS):
            sink.wait()
            assert job.seq[:, job.T:job.cur].tolist() == alone(model, tok, p, max_new_tokens=job.params.max_tokens)
            assert sink.text() == tok.decode(job.seq[0, job.T:job.cur].tolist())
        assert engine.stats["max_rows"] > 1
        assert engine.slots.rows == 0 and engine.slots.cache is None  # everything retired
    finally:
        engine.stop()


def test_seeded_sampling_with_n_choices_equals_generate(lm):
    model, tok = lm
    engine = Engine(model)
    try:
        sink = Sink()
        params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, top_k=50, n=3, seed=7)
        job = Job(model, tok, tok.encode("hello"), params, sink)
        engine.submit([job])
        sink.wait()
        ref = alone(model, tok, "hello", max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9, top_k=50,
                    num_return_sequences=3, seed=7)
        assert job.seq[:, job.T:job.cur].tolist() == ref
        assert [e["reason"] for e in sink.events if e["type"] == "finish"] == ["length"] * 3
    finally:
        engine.stop()


def test_stop_string_is_cut_from_the_text(lm):
    model, tok = lm
    full = tok.decode(alone(model, tok, "hello", max_new_tokens=20)[0])
    stop = full[5:8]
    expected = full[:full.index(stop)]
    engine = Engine(model)
    try:
        sink = Sink()
        job = Job(model, tok, tok.encode("hello"), SamplingParams(max_tokens=20, temperature=0, stop=[stop]), sink)
        engine.submit([job])
        sink.wait()
        assert sink.text() == expected
        assert [e["reason"] for e in sink.events if e["type"] == "finish"] == ["stop"]
    finally:
        engine.stop()


def test_cancelled_job_leaves_the_batch_and_queue_bound(lm):
    model, tok = lm
    engine = Engine(model, max_batch_rows=1, max_queue=1)
    try:
        release = threading.Event()

        def first(ev):  # the client "goes away" after its third token; until then the test fills the queue
            if ev["type"] == "token" and long_job.cur - long_job.T == 3:
                release.wait(10)
                long_job.cancelled = True

        long_job = Job(model, tok, tok.encode("a"), SamplingParams(max_tokens=90, temperature=0), first)
        engine.submit([long_job])
        deadline = time.monotonic() + 10
        while engine.load()["running"] == 0 and time.monotonic() < deadline:  # admitted: the queue is empty again
            time.sleep(0.001)
        second = Sink()
        engine.submit([Job(model, tok, tok.encode("b"), SamplingParams(max_tokens=2, temperature=0), second)])
        with pytest.raises(QueueFull):  # one waiting already (the batch holds one row, taken by the long job)
            engine.submit([Job(model, tok, tok.encode("c"), SamplingParams(max_tokens=2, temperature=0), Sink())])
        release.set()
        second.wait()
        assert long_job.cur - long_job.T == 3  # the engine dropped it at the next step
    finally:
        engine.stop()


def test_batch_cache_keeps_rows_right_aligned(lm):
    model, _ = lm
    slots = BatchCache(model, continuous=True)
    for length in (3, 5):
        cache = model.make_cache(1, length)
        model(torch.randint(0, 200, (1, length)), kv_cache=cache)
        slots.add(cache, [length])
    assert slots.width == 5 and slots.lens == [3, 5]
    assert slots.mask(1).tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    slots.keep([0])
    assert slots.width == 3 and slots.cache.length == 3 and slots.mask(1) is None


def test_protocol_refuses_bad_fields_with_the_parameter_named():
    limits = Limits(max_tokens=50, max_n=4)
    cases = [({"prompt": "x"}, "model"), ({"model": "m", "prompt": "x", "temperature": 3}, "temperature"),
             ({"model": "m", "prompt": "x", "n": 5}, "n"), ({"model": "m", "prompt": "x", "max_tokens": 51}, "max_tokens"),
             ({"model": "m", "prompt": "x", "stop": [""]}, "stop"), ({"model": "m", "prompt": "x", "foo": 1}, "foo"),
             ({"model": "m", "prompt": "x", "presence_penalty": 3}, "presence_penalty"),
             ({"model": "m", "prompt": "x", "logit_bias": {"1": "a"}}, "logit_bias"),
             ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
             ({"model": "m", "prompt": "x", "top_p": 0}, "top_p"), ({"model": "m", "prompt": []}, "prompt"),
             ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
             ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens")]
    for body, param in cases:
        with pytest.raises(APIError) as e:
            parse_completion(body, limits)
        assert e.value.status == 400 and e.value.param == param, (body, e.value.message)
    with pytest.raises(APIError, match="role"):
        parse_chat({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, limits)
    req = parse_chat({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                      "max_completion_tokens": 5, "logprobs": True, "top_logprobs": 2}, limits)
    assert req.messages == [{"role": "user", "content": "hi"}] and req.params.max_tokens == 5
    assert req.params.logprobs == 2


def test_chat_templates(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert ChatTemplate().render(msgs) == "System: Be brief.\nUser: Hi\nAssistant:"
    pytest.importorskip("jinja2")
    (tmp_path / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\\n'
        '{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"}')
    template = load_chat_template([tmp_path])
    assert template.kind == "jinja" and template.stops == []
    assert template.render(msgs) == "<s>[system] Be brief.\n[user] Hi\n[assistant]"
    assert load_chat_template([tmp_path / "missing"]).kind == "default"


def test_model_without_a_kv_cache_is_served_one_request_at_a_time():
    """An LSTM's state cannot be merged across requests: the engine decodes one job at a time, same tokens."""
    from llmcore.models import LSTMLM

    tok = ByteTokenizer()
    model = LSTMLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=32, n_layers=1, n_heads=4)).eval()
    engine = Engine(model, max_batch_rows=8)
    try:
        assert not engine.continuous
        jobs, sinks = [], []
        for p in ("hello", "ab", "xyz"):
            sinks.append(Sink())
            jobs.append(Job(model, tok, tok.encode(p), SamplingParams(max_tokens=8, temperature=0), sinks[-1]))
        engine.submit(jobs)
        for job, sink, p in zip(jobs, sinks, ("hello", "ab", "xyz")):
            sink.wait()
            assert job.seq[:, job.T:job.cur].tolist() == alone(model, tok, p, max_new_tokens=8)
        assert engine.stats["max_rows"] == 1
    finally:
        engine.stop()


def test_only_the_http_layer_imports_the_web_framework():
    """The engine, the service and the command's module load without Starlette / uvicorn (the serve extra)."""
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    code = ("import sys, llmcore.serve.service, llmcore.serve.server, llmcore.cli.serve\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_failing_request_ends_alone(lm):
    """Non-finite logits in one request's rows fail that request (an error event); the batch goes on."""
    model, tok = lm
    engine = Engine(model)
    try:
        healthy, broken = Sink(), Sink()
        good = Job(model, tok, tok.encode("hello"), SamplingParams(max_tokens=6, temperature=0), healthy)
        bad = Job(model, tok, tok.encode("hello"), SamplingParams(max_tokens=6, temperature=0), broken)
        nan = torch.full((1, tok.vocab_size), float("nan"))
        bad.procs = [lambda ids, logits: nan]  # as if the model had produced NaN for this request only
        engine.submit([good, bad])
        assert broken.wait().events[-1]["type"] == "error" and "non-finite" in broken.events[-1]["message"]
        assert healthy.wait().events[-1]["type"] == "done"
        assert good.seq[:, good.T:good.cur].tolist() == alone(model, tok, "hello", max_new_tokens=6)
    finally:
        engine.stop()


def test_an_encoder_decoder_translates_and_refuses_completions():
    from llmcore.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
    from llmcore.serve.protocol import GenerationRequest
    from llmcore.serve.server import build_service
    from llmcore.tokenizer import CharTokenizer
    from llmcore.translation.translator import Translator

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz 你好", specials=("<bos>", "<eos>", "<pad>", "<2en>",
                                                                              "<2zh>"))
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=24, d_model=32, n_layers=1,
                                             n_heads=4, pos_encoding="learned")).eval()
    service = build_service(model, tok, "mt")
    try:
        assert service.translator is not None and service.model_card()["translation"] is True
        assert service.engine.call(lambda: service.translator.translate(["hello"])).result(30) == \
            Translator(model, tok).translate(["hello"])
        with pytest.raises(APIError, match="translations"):
            service.prompt_ids(GenerationRequest("mt", ["hello"], SamplingParams(), False))
    finally:
        service.engine.stop()
