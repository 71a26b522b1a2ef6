"""A batch's numbers equal its files when two holders overlap on it: the service
functions called directly, a takeover simulated by changing claimed_by between steps."""

import pytest
from django.utils import timezone

from jobs import leases, services
from jobs.jsonl import dumps_line, output_line, request_error_line
from jobs.models import Batch, BatchResult

from .factories import chat_request, make_batch, read_jsonl

OLD = "old-host:1"
NEW = "new-host:2"


@pytest.fixture
def batch(user, chat_model):
    batch = make_batch(user, [chat_request(i) for i in "abcd"])
    Batch.objects.filter(pk=batch.pk).update(
        status="in_progress", total_requests=4, model="tiny-llama", claimed_by=OLD, heartbeat_at=timezone.now()
    )
    return batch


def row(line, custom_id, prompt_tokens=3, completion_tokens=2, error=False):
    if error:
        return (line, custom_id, True, dumps_line(request_error_line(custom_id, "bad", code="invalid_value")), 0, 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    body = {"object": "chat.completion", "usage": usage}
    return (line, custom_id, False, dumps_line(output_line(custom_id, body)), prompt_tokens, completion_tokens)


def take_over(batch, holder=NEW):
    Batch.objects.filter(pk=batch.pk).update(claimed_by=holder, heartbeat_at=timezone.now())


def counters(batch):
    batch.refresh_from_db()
    return batch.completed_requests, batch.failed_requests, batch.input_tokens, batch.output_tokens


def test_a_chunk_counts_only_the_rows_it_inserted(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a", 5, 7), row(2, "b", error=True)])
    take_over(batch)
    # The new holder runs lines 1 and 2 again (it read done_lines before the old one
    # saved) together with line 3: only line 3 is new.
    services.batch_results_save(
        batch_id=batch.pk, holder=NEW, rows=[row(1, "a", 50, 70), row(2, "b"), row(3, "c", 4, 1)]
    )
    assert counters(batch) == (2, 1, 5 + 4, 7 + 1)
    assert BatchResult.objects.filter(batch=batch).count() == 3


def test_the_old_holder_saves_nothing_after_a_takeover(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a")])
    take_over(batch)
    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(2, "b"), row(3, "c")])
    assert sorted(BatchResult.objects.filter(batch=batch).values_list("line", flat=True)) == [1]
    assert counters(batch) == (1, 0, 3, 2)
    batch.refresh_from_db()
    assert batch.claimed_by == NEW


def test_counts_equal_the_files_after_overlapping_holders(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a", 1, 1), row(2, "b", 2, 2)])
    take_over(batch)
    services.batch_results_save(
        batch_id=batch.pk, holder=NEW, rows=[row(2, "b", 2, 2), row(3, "c", 3, 3), row(4, "d", error=True)]
    )
    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(3, "c", 3, 3), row(4, "d", 4, 4)])
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=NEW) == "completed"
    batch.refresh_from_db()
    output, errors = read_jsonl(batch.output_file_id), read_jsonl(batch.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == ["a", "b", "c", "d"]
    assert (batch.completed_requests, batch.failed_requests) == (len(output), len(errors))
    usage = [line["response"]["body"]["usage"] for line in output]
    assert batch.input_tokens == sum(u["prompt_tokens"] for u in usage) == 6
    assert batch.output_tokens == sum(u["completion_tokens"] for u in usage) == 6
