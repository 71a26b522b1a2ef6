"""jobs.jsonl: the batch output and error files' lines, field by field against OpenAI's shapes."""

from jobs import jsonl


def test_output_line_shape():
    body = {"object": "chat.completion"}
    line = jsonl.output_line("req-1", body)
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_")
    assert line["custom_id"] == "req-1"
    assert line["error"] is None
    assert set(line["response"]) == {"status_code", "request_id", "body"}
    assert line["response"]["status_code"] == 200
    assert isinstance(line["response"]["request_id"], str) and line["response"]["request_id"]
    assert line["response"]["body"] is body


def test_request_error_line_puts_the_error_in_the_response_body():
    line = jsonl.request_error_line("req-2", "Bad temperature.", code="invalid_value", param="body.temperature")
    assert line["custom_id"] == "req-2"
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"] == {
        "error": {
            "message": "Bad temperature.",
            "type": "invalid_request_error",
            "param": "body.temperature",
            "code": "invalid_value",
        }
    }


def test_batch_error_line_has_no_response():
    line = jsonl.batch_error_line("req-3", "Window expired.", "batch_expired")
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_")
    assert line["custom_id"] == "req-3"
    assert line["response"] is None
    assert line["error"] == {"code": "batch_expired", "message": "Window expired."}
