"""Plain helpers shared by the jobs and workers tests: users, keys, input files, batches."""

import json
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import leases, services
from jobs.jsonl import output_line
from jobs.models import Batch, BatchResult, File

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

CHAT_MODEL = "tiny-llama"
EMBEDDING_MODEL = "tiny-embed"


def make_user(username="alice"):
    return get_user_model().objects.create_user(username=username, password="pw")


def make_client(owner, name="test"):
    """An APIClient that sends a fresh key of `owner`; the raw key is on `client.raw_key`."""
    api_key, raw_key = services.api_key_create(owner=owner, name=name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    client.raw_key = raw_key
    client.api_key = api_key
    return client


def chat_request(custom_id, content="Hello", model=CHAT_MODEL, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def completion_request(custom_id, prompt="Once upon a time", model=CHAT_MODEL, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": COMPLETIONS,
        "body": {"model": model, "prompt": prompt, **body},
    }


def embedding_request(custom_id, text="hello", model=EMBEDDING_MODEL, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": EMBEDDINGS,
        "body": {"model": model, "input": text, **body},
    }


def jsonl(lines):
    """JSONL bytes from dicts (dumped) and str/bytes (taken as they are)."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(json.dumps(line).encode())
    return b"\n".join(out) + b"\n"


def batch_row(owner, status, *, model="m-a", done=0, total=None, **fields):
    """A Batch row with the given counts and times, without an input file: for
    tests of figures computed from batches (stats, queue, metrics, admin). A batch
    made earlier was queued then too, unless told otherwise."""
    if "created_at" in fields:
        fields.setdefault("queued_at", fields["created_at"])
    return Batch.objects.create(
        owner=owner,
        endpoint=CHAT,
        input_file_id="file-x",
        status=status,
        model=model,
        total_requests=done if total is None else total,
        completed_requests=done,
        expires_at=timezone.now() + timedelta(hours=24),
        **fields,
    )


def make_input_file(owner, lines, filename="in.jsonl"):
    """Stores an input file through the service, as an upload would."""
    return services.file_create(owner=owner, upload=ContentFile(jsonl(lines), name=filename), purpose="batch")


def make_batch(owner, lines, endpoint=CHAT, **kwargs):
    """A validating batch over `lines`; nothing is enqueued (on_commit does not run in tests)."""
    return services.batch_create(owner=owner, input_file=make_input_file(owner, lines), endpoint=endpoint, **kwargs)


def read_jsonl(file_id):
    """The lines of a stored File, parsed."""
    if file_id is None:
        return []
    file = File.objects.get(pk=file_id)
    with default_storage.open(file.storage_name, "rb") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def custom_ids(lines):
    return [line["custom_id"] for line in lines]


def save_results(batch, lines_and_ids, payload=None):
    """Saved results as a crashed worker would leave them, with the batch's counters."""
    rows = [
        BatchResult(
            batch=batch,
            line=line,
            custom_id=custom_id,
            is_error=False,
            text=json.dumps(payload or output_line(custom_id, {"object": "chat.completion", "usage": {}})),
        )
        for line, custom_id in lines_and_ids
    ]
    BatchResult.objects.bulk_create(rows)
    Batch.objects.filter(pk=batch.pk).update(completed_requests=len(rows))


def live_holder():
    """A lease holder name for this very process, which is alive."""
    return leases.holder_name()


def dead_holder():
    """A lease holder name for a process on this host that cannot exist (pid above pid_max)."""
    with open("/proc/sys/kernel/pid_max") as f:
        return f"{leases.machine_name()}:{int(f.read()) + 1}"


def assert_error(response, status, code=None, param=None):
    """The response is OpenAI's error envelope with this status (and code, param if given)."""
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error
