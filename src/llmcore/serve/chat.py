"""Chat templates: how ``/v1/chat/completions`` turns a list of messages into one prompt.

A Hugging Face model directory may carry its template: ``chat_template`` in ``tokenizer_config.json`` (a
Jinja string, or a list of named ones, of which ``default`` is used) or a ``chat_template.jinja`` file. It is
rendered as ``transformers`` renders it: a sandboxed Jinja environment (``jinja2``, in the ``serve`` extra)
with ``messages``, ``add_generation_prompt=True``, ``bos_token`` / ``eos_token`` and ``raise_exception``.

Every other model (llmcore's own have no chat training) gets :data:`DEFAULT_TEMPLATE`, plain text a base
model can continue::

    System: You are terse.
    User: Hello!
    Assistant: Hi.
    User: How are you?
    Assistant:

one line per message, ``Role: content``, and the generation starts after the final ``Assistant:``. With it the
reply also stops at :data:`DEFAULT_STOPS` (a new ``User:`` line), because a base model would otherwise go on
writing both sides of the conversation; the stop string is not part of the reply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import read_bounded, read_json
from .protocol import APIError

DEFAULT_TEMPLATE = "{role}: {content}\n"  # one line per message; "Assistant:" then starts the reply
DEFAULT_STOPS = ["\nUser:"]
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
MAX_TEMPLATE_BYTES = 1 << 20


class ChatTemplate:
    """Render messages into a prompt: a Jinja ``source`` from a Hugging Face directory, or the default.

    Args:
        source: the Jinja template, or None for :data:`DEFAULT_TEMPLATE`.
        bos_token, eos_token: the strings the template may insert (from ``tokenizer_config.json``).
    """

    def __init__(self, source: str | None = None, bos_token: str = "", eos_token: str = "") -> None:
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token
        self.stops = [] if source else list(DEFAULT_STOPS)
        self._template = None
        if source:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError as e:
                raise ConfigError("This model has a Jinja chat template, which needs jinja2: pip install "
                                  "'llmcore[serve]'.") from e

            def raise_exception(message: str) -> None:
                raise APIError(400, f"The model's chat template refused the messages: {message}",
                               param="messages")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            try:
                self._template = env.from_string(source)
            except Exception as e:  # a TemplateSyntaxError: the directory's file is broken
                raise ConfigError(f"The model's chat template does not parse ({e}); fix chat_template in "
                                  "tokenizer_config.json.") from e

    @property
    def kind(self) -> str:
        return "jinja" if self.source else "default"

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages`` (each ``{"role", "content"}``), ready for the assistant's reply."""
        if self._template is None:
            lines = "".join(DEFAULT_TEMPLATE.format(role=ROLE_NAMES[m["role"]], content=m["content"])
                            for m in messages)
            return lines + "Assistant:"
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                                         eos_token=self.eos_token)
        except APIError:
            raise
        except Exception as e:  # the sandbox refused something, or the template failed on these messages
            raise APIError(400, f"The model's chat template failed on these messages: {e}",
                           param="messages") from e


def _token_string(value: Any) -> str:
    """``bos_token`` / ``eos_token`` of tokenizer_config.json: a string, or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def load_chat_template(directories: list[Path]) -> ChatTemplate:
    """The template of the first directory that has one (``chat_template.jinja`` or ``tokenizer_config.json``
    with ``chat_template``), else the default."""
    for d in directories:
        config_path = d / "tokenizer_config.json"
        config = read_json(config_path, "tokenizer config", ConfigError) if config_path.is_file() else {}
        source = config.get("chat_template")
        if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        jinja_path = d / "chat_template.jinja"
        if not source and jinja_path.is_file():
            source = read_bounded(jinja_path, "chat template", MAX_TEMPLATE_BYTES, ConfigError).decode("utf-8")
        if source is not None and not isinstance(source, str):
            raise ConfigError(f"{config_path}: chat_template is a {type(source).__name__}, not a Jinja string.")
        if source:
            return ChatTemplate(source, _token_string(config.get("bos_token")), _token_string(config.get("eos_token")))
    return ChatTemplate()
