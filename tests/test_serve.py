"""``llmcore serve`` end to end: a real server in a subprocess on a free loopback port, the official client.

The model is a tiny random TransformerLM (CharTokenizer, language tags and translation settings, so the same
model answers completions, chat and translations). Equivalences, as elsewhere in the suite: greedy server
text = ``llmcore generate``; 16 concurrent streams = the same requests one at a time; seeded sampling =
``generate(seed=...)`` in-process. Every bad request gets its 4xx JSON error and the server keeps serving.
A second server (the same application on uvicorn in a thread of this process: one row at a time, a queue of
one, an API key) covers 401, 429 and client disconnects. The servers live in ``serve_servers.py``.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'llmcore[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'llmcore[serve]')")
openai = pytest.importorskip("openai", reason="the official openai client (dev extra) is not installed")

from llmcore import ModelConfig, TransformerLM  # noqa: E402
from llmcore.generation import generate  # noqa: E402
from llmcore.tokenizer import CharTokenizer, load_tokenizer  # noqa: E402
from llmcore.translation.translator import Translator  # noqa: E402
from serve_servers import Server, ThreadServer  # noqa: E402

pytestmark = pytest.mark.xdist_group("serve")  # one worker runs this file, so its servers start once

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:!?'\n"
CONTEXT = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET, specials=("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>"))
    config = ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, max_seq_len=CONTEXT,
                                     extra={"translation": {"src_lang_tag": "<2en>", "tgt_lang_tag": "<2zh>"}})
    d = tmp_path_factory.mktemp("serve") / "tiny"
    TransformerLM(config).save_pretrained(d, tokenizer=tok)
    return d


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    """Both servers:

    * ``llmcore serve`` in a subprocess, with small limits so that the bad requests below can reach them;
    * in a thread, one request at a time, one waiting at most, a key: for 401, 429 and a client that leaves
      mid-stream (a longer context, so that the stream it leaves would run for seconds).
    """
    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET)
    long_dir = tmp_path_factory.mktemp("serve") / "long"
    TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, max_seq_len=2048)).save_pretrained(
        long_dir, tokenizer=tok)
    started = [Server(model_dir, "--max-tokens-limit", "200", "--max-body-bytes", "4096")]
    started.append(ThreadServer(long_dir, max_batch_rows=1, max_queue=1, api_key="s3cret", max_tokens_limit=2000))
    try:
        yield [s.ready() for s in started]
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def small_server(servers):
    return servers[1]


@pytest.fixture(scope="module")
def local(model_dir):
    """The same model and tokenizer in this process (the references)."""
    return TransformerLM.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)


def greedy(client, prompt: str, max_tokens: int = 20, **kw):
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


def stream_text(client, prompt: str, max_tokens: int = 20, **kw) -> tuple[str, str | None]:
    text, finish = "", None
    for chunk in client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           stream=True, **kw):
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_models_health_and_playground(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    status, health = server.get("/health")
    assert status == 200 and health["continuous_batching"] is True
    with urllib.request.urlopen(server.url + "/", timeout=30) as r:
        page = r.read().decode()
    assert "llmcore playground" in page and "<script src=" not in page  # one self-contained page, no CDN


def test_greedy_completion_equals_llmcore_generate(server, model_dir, capsys):
    from llmcore.cli import main

    capsys.readouterr()
    assert main(["generate", "--model", str(model_dir), "--prompt", "Hello there", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    expected = out[len("Hello there"):-1]  # the command prints prompt + continuation + newline
    resp = greedy(server.client(), "Hello there", 24)
    assert resp.choices[0].text == expected
    assert resp.usage.prompt_tokens == len("Hello there") and resp.usage.completion_tokens == 24
    assert stream_text(server.client(), "Hello there", 24) == (expected, "length")


def test_chat_streaming_and_not(server, local):
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    resp = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    text = resp.choices[0].message.content
    assert resp.choices[0].message.role == "assistant" and resp.object == "chat.completion"
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=16, temperature=0, stream=True) if c.choices]
    assert "".join(parts) == text
    # the documented default template, continued like a completion (which stops at a new "User:" line)
    prompt = "System: Be brief.\nUser: Hi\nAssistant:"
    assert greedy(client, prompt, 16, stop=["\nUser:"]).choices[0].text == text


def test_n_choices_seeded_sampling_reproducible_and_equal_to_generate(server, local):
    client = server.client()
    kw = dict(model="tiny", prompt="Once", max_tokens=12, temperature=0.9, top_p=0.95, n=3, seed=11)
    first = client.completions.create(**kw)
    again = client.completions.create(**kw)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    model, tok = local
    ids = torch.tensor([tok.encode("Once")])
    ref = generate(model, ids, max_new_tokens=12, do_sample=True, temperature=0.9, top_p=0.95,
                   num_return_sequences=3, seed=11, tokenizer=tok)
    assert texts == [tok.decode(row) for row in ref[:, ids.shape[1]:].tolist()]
    other = client.completions.create(**{**kw, "seed": 12})
    assert [c.text for c in sorted(other.choices, key=lambda c: c.index)] != texts


def test_penalties_and_logit_bias_equal_generate(server, local):
    """OpenAI's presence / frequency penalties and logit_bias give the tokens generate gives with the same
    options (greedy), and change them."""
    model, tok = local
    options = dict(presence_penalty=0.5, frequency_penalty=1.5, logit_bias={tok.encode("e")[0]: 4.0})
    resp = greedy(server.client(), "Hello", 16, presence_penalty=0.5, frequency_penalty=1.5,
                  logit_bias={str(k): v for k, v in options["logit_bias"].items()})
    ids = torch.tensor([tok.encode("Hello")])
    ref = generate(model, ids, max_new_tokens=16, do_sample=False, tokenizer=tok, **options)
    assert resp.choices[0].text == tok.decode(ref[0, ids.shape[1]:].tolist())
    assert resp.choices[0].text != greedy(server.client(), "Hello", 16).choices[0].text
    assert "e" in resp.choices[0].text


def test_stop_strings_end_the_text_before_them(server):
    client = server.client()
    full = greedy(client, "Tell me", 30).choices[0].text
    stop = full[6:9]
    expected = full[:full.index(stop)]
    resp = greedy(client, "Tell me", 30, stop=[stop, "never-seen"])
    assert (resp.choices[0].text, resp.choices[0].finish_reason) == (expected, "stop")
    assert stream_text(client, "Tell me", 30, stop=stop) == (expected, "stop")


def test_logprobs_prompt_lists_and_echo(server):
    resp = greedy(server.client(), ["ab", "cd"], 5, logprobs=2, echo=True)
    assert [c.index for c in resp.choices] == [0, 1]
    for c, prompt in zip(resp.choices, ["ab", "cd"]):  # echo + logprobs: the 2 prompt tokens, then the 5 made
        assert c.text.startswith(prompt) and len(c.logprobs.tokens) == 2 + 5
        assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None  # no context
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs[1:])
        assert all(len(t) <= 2 for t in c.logprobs.top_logprobs[1:])
        assert c.logprobs.text_offset[:3] == [0, 1, 2]  # the prompt's characters, then the text made after it


def _reference_logprobs(model, ids: list[int]) -> list[float]:
    """log P(ids[i] | ids[:i]) for i >= 1, from one full forward pass in this process."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].float(), dim=-1)
    return lp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_zero_max_tokens_scores_the_prompt_as_harnesses_ask(server, local, stream):
    """lm-evaluation-harness's loglikelihood request (prompt ids, echo, logprobs, max_tokens=0): every prompt
    token's log-probability under the model, equal to a full forward pass in this process, nothing generated;
    and for a greedy continuation, equal to what the server reported while generating it, each token the top
    choice of its position."""
    model, tok = local
    client = server.client()
    prompt = tok.encode("To be, or not")
    made = client.completions.create(model="tiny", prompt=[prompt], max_tokens=6, temperature=0, logprobs=1)
    k = len(made.choices[0].logprobs.token_logprobs)  # 6, or fewer if it stopped at the end of sequence
    ids = prompt + generate(model, torch.tensor([prompt]), max_new_tokens=k, do_sample=False,
                            tokenizer=tok)[0, len(prompt):len(prompt) + k].tolist()
    kw = dict(model="tiny", prompt=[ids], max_tokens=0, echo=True, logprobs=1, temperature=0)
    if stream:
        chunks = list(client.completions.create(**kw, stream=True))
        assert len(chunks) == 1 and chunks[0].choices[0].finish_reason == "length"
        choice = chunks[0].choices[0]
    else:
        resp = client.completions.create(**kw)
        assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 0
        choice = resp.choices[0]
    lp = choice.logprobs
    assert choice.text == tok.decode(ids) and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(_reference_logprobs(model, ids), abs=1e-4)
    assert lp.token_logprobs[-k:] == pytest.approx(made.choices[0].logprobs.token_logprobs, abs=1e-4)
    assert all(max(top, key=top.get) == t for t, top in zip(lp.tokens[-k:], lp.top_logprobs[-k:]))  # greedy
    assert lp.text_offset == [len(tok.decode(ids[:i])) for i in range(len(ids))]


def test_zero_max_tokens_needs_echo(server):
    got, err = server.post("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 0})
    assert got == 400 and err["error"]["param"] == "max_tokens" and "echo" in err["error"]["message"], err


def test_16_concurrent_streams_equal_one_at_a_time(server):
    prompts = ["the", "a", "some words", "Q", "hello there", "xyz", "so", "To be", "or not", "Z", "many more words",
               "b", "It was", "Call me", "In the", "Yes"]
    client = server.client()
    alone = [greedy(client, p, 8 + i).choices[0].text for i, p in enumerate(prompts)]
    _, before = server.get("/health")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda a: stream_text(server.client(), a[1], 8 + a[0])[0], enumerate(prompts)))
    assert together == alone
    _, after = server.get("/health")
    assert after["stats"]["max_rows"] > 1  # the requests really shared forward passes
    assert after["stats"]["steps"] - before["stats"]["steps"] < sum(8 + i for i in range(16))


def test_translations_endpoint_equals_translator(server, model_dir):
    status, body = server.post("/v1/translations", {"model": "tiny", "input": ["hello", "good day"]})
    assert status == 200
    ref = Translator.from_pretrained(model_dir).translate(["hello", "good day"])
    assert [d["text"] for d in body["data"]] == ref


BAD = [  # (path, body or raw bytes, status, code or param)
    ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "a"}]}, 404,
     "model_not_found"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "temperature": 9}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 201}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "frobnicate": 1}, 400, "frobnicate"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "logit_bias": {"x": 5}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "logit_bias": {"3": 101}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "logit_bias": {"99999": 1}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stop": 3}, 400, "stop"),
    ("/v1/completions", {"model": "tiny"}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "a" * 250, "max_tokens": 10}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": "tiny", "prompt": "a" * CONTEXT}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": "tiny", "prompt": "digits 123"}, 400, "prompt"),  # not in the alphabet
    ("/v1/completions", {"model": "tiny", "prompt": [[1, 2, 99999]]}, 400, "prompt"),  # outside the vocabulary
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a"}], "tools": [{}]},
     400, "tools"),
    ("/v1/completions", None, 400, "invalid_json"),
    ("/v1/completions", [1, 2], 400, None),
    ("/v1/completions", {"model": "tiny", "prompt": "a" * 5000}, 413, "request_too_large"),
    ("/v1/translations", {"model": "tiny", "input": ""}, 400, "input"),
    ("/v1/nothing", {}, 404, "not_found"),
]


@pytest.mark.parametrize("path,body,status,code", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, path, body, status, code):
    raw = b"{not json" if body is None else None
    got, err = server.post(path, body, raw=raw)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
    if code is not None:
        assert code in (err["error"]["code"], err["error"]["param"]), err
    assert "Traceback" not in err["error"]["message"]
    assert greedy(server.client(), "still there", 3).choices[0].finish_reason == "length"


def test_the_guides_client_snippets_run(server, model_dir, capsys):
    """docs/guides/serving.md's Python blocks, in order, against this server instead of one on port 8000 (and
    with its model's tokenizer for the bundled one's)."""
    import re

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "serving.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", guide, re.S | re.M)
    assert len(blocks) == 2 and "http://127.0.0.1:8000/v1" in blocks[0] and '"shakespeare"' in blocks[1]
    namespace: dict = {}
    exec(compile(blocks[0].replace("http://127.0.0.1:8000", server.url), "serving.md", "exec"), namespace)
    assert capsys.readouterr().out
    exec(compile(blocks[1].replace('"shakespeare"', repr(str(model_dir))), "serving.md", "exec"), namespace)
    assert capsys.readouterr().out.startswith("log P(answer | context) = -")


def test_wrong_method_and_client_errors(server):
    assert server.get("/v1/completions")[0] == 405
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="other", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context length"):
        server.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a" * 300}])


def test_api_key_queue_full_and_disconnect(small_server):
    s = small_server
    with pytest.raises(openai.AuthenticationError):
        s.client("wrong").completions.create(model="tiny", prompt="a", max_tokens=2)
    assert s.get("/v1/models")[0] == 401 and s.get("/health")[0] == 200
    client = s.client("s3cret")
    # min_tokens: these requests sample (temperature 1), and a draw of the end of sequence would stop them at 1
    two = {"max_tokens": 2, "extra_body": {"min_tokens": 2}}
    assert client.completions.create(model="tiny", prompt="a", **two).usage.completion_tokens == 2
    # A long stream holds the only row; one request waits; the next is refused with 429.
    long = client.completions.create(model="tiny", prompt="a", max_tokens=2000, temperature=0, stream=True)
    next(iter(long))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.completions.create, model="tiny", prompt="b", **two)
        deadline = time.monotonic() + 30
        while s.request("GET", "/health")[1]["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="tiny", prompt="c", max_tokens=2)
        long.close()  # the client goes away: its generation stops, and the waiting request runs
        assert waiting.result(timeout=60).usage.completion_tokens == 2
    deadline = time.monotonic() + 30  # the engine retires a cancelled job at its next step: wait for that step
    while (health := s.get("/health")[1])["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health["running"] == 0 and health["stats"]["tokens"] < 2 + 2000 + 2, health  # it stopped early


def test_missing_extra_is_one_line_and_status_2(model_dir, capsys, monkeypatch):
    from llmcore.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'llmcore[serve]'" in err[0]




def test_playground_script_streams_under_node(server, tmp_path):
    """The page's JavaScript, run by Node against the server (no browser needed): it streams the same text a
    greedy completion returns and reports tokens per second."""
    import re

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the playground's script cannot run without a browser")
    with urllib.request.urlopen(server.url + "/", timeout=30) as r:
        page = r.read().decode()
    (tmp_path / "page.js").write_text(re.search(r"<script>(.*)</script>", page, re.S).group(1))
    harness = Path(__file__).parent / "fixtures" / "playground_harness.js"
    out = subprocess.run([node, str(harness), str(tmp_path / "page.js"), server.url, "Once upon"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["error"] == "" and shown["model"].startswith("tiny")
    assert shown["output"] == "Once upon" + greedy(server.client(), "Once upon", 12).choices[0].text
    assert "12 tokens in" in shown["stats"] and "tokens/s" in shown["stats"]
