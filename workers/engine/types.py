"""Plain data the engine takes and returns: importable without vLLM."""

from dataclasses import dataclass, field


class EngineError(Exception):
    """A request the engine refused on its own (bad parameters, prompt too long)."""

    def __init__(self, message, param=None, code="invalid_request"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class EngineDead(Exception):
    """The engine's process died (a crash, the OOM killer): nothing more runs on it."""


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list
    top: list = field(default_factory=list)  # [(token, logprob, bytes)]


@dataclass
class Choice:
    text: str
    completion_tokens: int
    finish_reason: str
    stop_reason: object = None
    logprobs: list | None = None  # [TokenLogprob]


@dataclass
class Generation:
    prompt_tokens: int
    choices: list


@dataclass
class Embedding:
    prompt_tokens: int
    vector: list


@dataclass
class GenerateItem:
    """One engine request. `chat` holds messages; otherwise `prompt` is a string
    or a list of token ids."""

    key: object
    sampling: dict
    chat: list | None = None
    prompt: object = None
    chat_options: dict = field(default_factory=dict)
