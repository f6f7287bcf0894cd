"""The playground page in a real headless browser: Playwright drives the system's Chromium against
``llmcore serve --model shakespeare`` (a subprocess on a free port). Type a prompt, press Generate, and the
text must appear while the request is still streaming, in several pieces, and end as the greedy text of
``llmcore generate``. Skipped, naming what to install, when Playwright or a Chromium executable is missing;
``LLMCORE_CHROMIUM=/path/to/chrome`` picks the executable (a path that does not exist forces the skip).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'llmcore[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'llmcore[serve]')")
pytest.importorskip("openai", reason="the official openai client (dev extra) is not installed")

from serve_servers import Server  # noqa: E402

PROMPT, TOKENS = "ROMEO:", 40
OBSERVE = """() => { window.updates = [];
  new MutationObserver((records) => window.updates.push({records: records.length,
      text: document.querySelector('#output').textContent, running: document.querySelector('#generate').disabled}))
    .observe(document.querySelector('#output'), {childList: true, characterData: true, subtree: true}); }"""


def chromium() -> str | None:
    given = os.environ.get("LLMCORE_CHROMIUM")
    if given is not None:
        return given if os.path.exists(given) else None
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def test_playground_streams_in_headless_chromium(capsys):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright, in the dev extra)")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium executable (apt-get install chromium, or set LLMCORE_CHROMIUM to one; "
                    f"LLMCORE_CHROMIUM={os.environ.get('LLMCORE_CHROMIUM')!r})")
    from llmcore.cli import main

    capsys.readouterr()
    assert main(["generate", "--model", "shakespeare", "--prompt", PROMPT, "--max-new-tokens", str(TOKENS)]) == 0
    expected = capsys.readouterr().out[:-1]  # prompt + greedy continuation (then a newline)
    server = Server("shakespeare")
    try:
        server.ready()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, timeout=30_000)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 560})
                page.set_default_timeout(20_000)
                page.goto(server.url + "/")
                page.wait_for_function("document.querySelector('#model').textContent.startsWith('shakespeare')")
                page.fill("#temperature", "0")
                page.fill("#max_tokens", str(TOKENS))
                page.click("#prompt")
                page.keyboard.type(PROMPT)
                page.evaluate(OBSERVE)
                page.click("#generate")
                page.wait_for_function("document.querySelector('#stats').textContent.includes('tokens in')")
                updates = page.evaluate("window.updates")
                output = page.text_content("#output")
                stats = page.text_content("#stats")
                assert page.text_content("#error") == ""
                assert output == expected
                assert f"{TOKENS} tokens in" in stats and "tokens/s" in stats
                shown = [u["text"] for u in updates if u["running"] and len(u["text"]) > len(PROMPT)]
                assert len(set(shown)) > 1, updates  # text grew in several steps while the request ran
                assert all(expected.startswith(t) for t in shown)
                if os.environ.get("LLMCORE_SCREENSHOT"):
                    page.screenshot(path=os.environ["LLMCORE_SCREENSHOT"])
            finally:
                browser.close()
    finally:
        server.stop()
