"""A fake engine with the interface of workers.engine.vllm_engine.Engine, for tests without vLLM."""

from contextlib import contextmanager

from jobs.tests.factories import CHAT_MODEL
from workers.engine.types import Choice, Embedding, Generation


def prompt_text(item):
    """What a GenerateItem asks, as text: the last chat message, or the prompt."""
    if item.chat is not None:
        return item.chat[-1]["content"]
    return item.prompt if isinstance(item.prompt, str) else " ".join(map(str, item.prompt))


def echo(item):
    """The fake engine's default answer: one choice per `n`, echoing the prompt."""
    n = item.sampling.get("n", 1)
    text = prompt_text(item)
    return Generation(
        prompt_tokens=len(text.split()),
        choices=[Choice(text=f"re: {text}", completion_tokens=2, finish_reason="stop") for _ in range(n)],
    )


class FakeEngine:
    """Stands in for workers.engine.vllm_engine.Engine: pulls items lazily, as vLLM's loop does,
    and records what it was given."""

    def __init__(self, name, respond=echo, before_result=None, vectors=None):
        self.name = name
        self.respond = respond
        # Called with the number of items pulled so far, before each result goes out.
        self.before_result = before_result
        self.items = []
        self.embed_calls = []
        self.vectors = vectors or (lambda text, dimensions: [0.5, -1.25, 2.0][: dimensions or 3])

    def generate(self, items):
        for item in items:
            self.items.append(item)
            result = self.respond(item)
            if self.before_result:
                self.before_result(len(self.items))
            yield item.key, result

    def embed(self, inputs, dimensions=None):
        self.embed_calls.append((list(inputs), dimensions))
        out = []
        for text in inputs:
            vector = self.vectors(text, dimensions)
            out.append(vector if not isinstance(vector, list) else Embedding(prompt_tokens=2, vector=vector))
        return out

    @property
    def lines(self):
        """The input lines the engine was asked to generate for, in order, once each."""
        seen = []
        for item in self.items:
            if item.key[0] not in seen:
                seen.append(item.key[0])
        return seen


class EngineStub:
    """Replaces workers.engine.host.engine_for: one FakeEngine per model name."""

    def __init__(self):
        self.fakes = {}
        self.requested = []

    @contextmanager
    def engine_for(self, registered_model, **kwargs):
        self.requested.append(registered_model.name)
        yield self.fake(registered_model.name)

    def fake(self, name=CHAT_MODEL, **kwargs):
        """The fake serving `name`; keyword arguments replace it with a new FakeEngine."""
        if kwargs or name not in self.fakes:
            self.fakes[name] = FakeEngine(name, **kwargs)
        return self.fakes[name]
