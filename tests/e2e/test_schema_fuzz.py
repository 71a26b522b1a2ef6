"""schemathesis over the live OpenAPI schema (/v1/openapi.json) of the real stack:
every operation (Files, Batches, Models, realtime, queue and stats, the labeling
endpoints and the Label Studio webhook) gets generated and boundary cases, with
a real file, batch and model in the path and body parameters half of the time.

Holds for every answer: no 500 (nor any 5xx but a realtime 503/504: no worker
holds the model, or the request's own timeout), a documented status and content
type, a body that matches the schema, and every 4xx in OpenAI's error envelope."""

import collections
import json
import os
import time

import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from .conftest import FINISHED, chat_request, jsonl, wait_finished

pytestmark = pytest.mark.e2e

# Per operation, generated cases; boundary (coverage) cases come on top. About 1,000
# cases in all, ~1 min on the shared 2-core CI machine.
MAX_EXAMPLES = 12
REALTIME_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/inference"}
ENVELOPE_KEYS = {"message", "type", "param", "code"}
CASES = collections.Counter()
STATUSES = collections.Counter()
TIMES = {}


def no_server_error(ctx, response, case):
    status = response.status_code
    if status < 500:
        return
    if case.path in REALTIME_PATHS and status in (503, 504):
        return
    raise AssertionError(f"{status} from {case.method} {case.formatted_path}: {response.text[:500]}")


def error_envelope(ctx, response, case):
    if not 400 <= response.status_code < 500:
        return
    body = json.loads(response.text)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], dict) and set(body["error"]) == ENVELOPE_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def fuzz_config(*, api_key, webhook_secret, file_id, batch_id, model):
    return schemathesis.Config.from_dict(
        {
            # One seed, so CI replays the same cases run after run; SCHEMA_FUZZ_SEED explores others.
            "seed": int(os.environ.get("SCHEMA_FUZZ_SEED", "20261201")),
            # The webhook secret only matters to /v1/webhooks/label-studio, which takes no API key.
            "headers": {"Authorization": f"Bearer {api_key}", "X-Webhook-Secret": webhook_secret},
            "request-timeout": 60,
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "enabled": False,
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_headers_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
            "dictionaries": {
                "files": {"values": [file_id]},
                "batches": {"values": [batch_id]},
                "models": {"values": [model]},
            },
            "parameters": {
                "path.file_id": {"dictionary": "files", "probability": 0.5},
                "path.batch_id": {"dictionary": "batches", "probability": 0.5},
                "path.model_id": {"dictionary": "models", "probability": 0.5},
                "body.input_file_id": {"dictionary": "files", "probability": 0.5},
                "body.model": {"dictionary": "models", "probability": 0.5},
            },
        }
    )


def bounded(case):
    """A realtime request for the real model runs on the engine: keep it to a few tokens."""
    body = case.body
    if case.path in REALTIME_PATHS and isinstance(body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(name), int):
                body[name] = min(body[name], 8)
        if isinstance(body.get("n"), int):
            body["n"] = min(body["n"], 2)
        if isinstance(body.get("timeout"), int | float):
            body["timeout"] = min(body["timeout"], 10)


@pytest.fixture(scope="module")
def fuzz_key(stack):
    return stack.create_api_key("schema-fuzz")


@pytest.fixture(scope="module")
def fuzz_schema(stack, fuzz_key):
    client = openai.OpenAI(base_url=stack.base_url, api_key=fuzz_key, max_retries=0, timeout=60)
    file = client.files.create(
        file=("fuzz.jsonl", jsonl([chat_request("fuzz-0", "hello", max_tokens=2)])), purpose="batch"
    )
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    config = fuzz_config(
        api_key=fuzz_key,
        webhook_secret=stack.env["LABEL_STUDIO_WEBHOOK_SECRETS"].split(",")[-1],
        file_id=file.id,
        batch_id=batch.id,
        model="tiny-llama",
    )
    yield schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json", config=config)
    # The batches the cases created must not keep the shared worker busy for the next tests.
    created = [b for b in client.batches.list(limit=100) if b.status not in FINISHED]
    for batch in created:
        try:
            client.batches.cancel(batch.id)
        except openai.ConflictError:
            pass  # finalizing or finished since it was listed
    for batch in created:
        wait_finished(client, batch.id, timeout=120)


@pytest.fixture(autouse=True)
def _node_id(request):
    # schemathesis 4.32's lazy schema reads and renames Node._nodeid, which pytest 9 no longer has.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_fuzz(case, stack):
    bounded(case)
    CASES[case.operation.label] += 1
    TIMES.setdefault("first", time.monotonic())
    response = case.call(base_url=f"http://127.0.0.1:{stack.port}")
    TIMES["last"] = time.monotonic()
    STATUSES[response.status_code] += 1
    # gunicorn's request-line limit (4 KB; a long query of multi-byte characters passes
    # it): its HTML 414 comes before Django, as a proxy's own limit would.
    if response.status_code == 414:
        return
    case.validate_response(response, additional_checks=[no_server_error, error_envelope])


def test_schema_fuzz_reached_every_operation(fuzz_schema, stack):
    if not CASES:
        pytest.skip("runs after test_schema_fuzz")
    operations = {operation.ok().label for operation in fuzz_schema.get_all_operations()}
    assert operations <= set(CASES), f"no cases for {operations - set(CASES)}"
    total, seconds = sum(CASES.values()), round(TIMES["last"] - TIMES["first"], 1)
    (stack.var_dir / "schema_fuzz.json").write_text(
        json.dumps({"cases": total, "seconds": seconds, "by_operation": CASES, "by_status": STATUSES}, indent=1)
    )
    print(
        f"schemathesis: {total} cases over {len(CASES)} operations in {seconds} s; "
        f"statuses {dict(sorted(STATUSES.items()))}"
    )
