import json

import psutil
import pytest

pytestmark = pytest.mark.e2e


def peak_rss(pid):
    """The process's high-water resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_200_mb_upload_with_50000_lines_is_streamed(client, stack, tmp_path):
    path = tmp_path / "big.jsonl"
    padding = "x" * 4000
    with path.open("w") as out:
        for i in range(50_000):
            body = {"model": "tiny-llama", "messages": [{"role": "user", "content": f"{i} {padding}"}], "max_tokens": 1}
            request = {"custom_id": f"big-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(request))
            out.write("\n")
    size = path.stat().st_size
    assert size >= 200_000_000
    web = psutil.Process(stack.web.pid)
    workers = web.children()

    with path.open("rb") as handle:
        uploaded = client.files.create(file=("big.jsonl", handle), purpose="batch")

    assert uploaded.bytes == size
    assert client.files.retrieve(uploaded.id).bytes == size
    peak = max(peak_rss(p.pid) for p in workers if p.is_running())
    assert peak < 150 * 1024 * 1024, f"a web worker holds {peak / 1e6:.0f} MB: the upload was read into memory"
    downloaded = 0
    with client.files.with_streaming_response.content(uploaded.id) as response:
        for chunk in response.iter_bytes():
            downloaded += len(chunk)
    assert downloaded == size
    client.files.delete(uploaded.id)
