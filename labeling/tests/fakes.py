"""A stand-in for workers.inference.chat in the fast tests: answers each request
as a guided engine would, from answers the test gives per task text."""

import json
import math


def tokens(text, logprob=-0.1, size=3):
    return [(text[i : i + size], logprob) for i in range(0, len(text), size)]


def _first_valid(schema):
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: _first_valid(s) for name, s in schema["properties"].items()}
    if kind == "array":
        return [_first_valid(schema["items"])] * schema.get("minItems", 0)
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return "x"


class FakeChat:
    """Records its calls; answers[task text] is the answer (str for guided choice,
    a dict for JSON); otherwise the first valid value of the guided output."""

    def __init__(self, answers=None, fail=None, logprob=-0.1):
        self.answers = answers or {}
        self.fail = fail or set()
        self.logprob = logprob
        self.calls = []

    def _answer(self, request):
        prompt = request["messages"][-1]["content"]
        for text, answer in self.answers.items():
            if text in prompt:
                return answer if isinstance(answer, str) else json.dumps(answer, separators=(",", ":"))
        if "guided_choice" in request:
            return request["guided_choice"][0]
        schema = request["response_format"]["json_schema"]["schema"]
        return json.dumps(_first_valid(schema), separators=(",", ":"))

    def __call__(self, requests, *, model, timeout=None):
        from workers.inference import ChatResult

        self.calls.append({"requests": list(requests), "model": model, "timeout": timeout})
        results = []
        for request in requests:
            prompt = request["messages"][-1]["content"]
            if any(text in prompt for text in self.fail):
                results.append(ChatResult(text=None, error={"code": "invalid_request", "message": "prompt too long"}))
                continue
            text = self._answer(request)
            assert request.get("logprobs") is True
            results.append(ChatResult(text=text, finish_reason="stop", token_logprobs=tokens(text, self.logprob)))
        return results


def expected_score(logprob):
    return math.exp(logprob)
