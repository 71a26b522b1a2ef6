"""jobs.ranges: a batch split into ranges of lines that several workers run at once."""

import datetime
import json

import pytest
from django.utils import timezone

from jobs import leases, ranges, services
from jobs.models import Batch, BatchRange, BatchResult
from jobs.tests.factories import chat_request, make_batch

A, B = "node-a:1", "node-b:1"


@pytest.fixture
def split_by_three(settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "SPLIT_REQUESTS": 3}


def running(user, count):
    batch = make_batch(user, [chat_request(f"r{i}") for i in range(count)])
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=count, model="tiny-llama")
    batch.refresh_from_db()
    return batch


def spans(batch):
    return list(BatchRange.objects.filter(batch=batch).order_by("first_line").values_list("first_line", "end_line"))


def row(line, custom_id=None):
    return (line, custom_id or f"r{line - 1}", False, json.dumps({"custom_id": f"r{line - 1}"}), 3, 5)


def make_stale(batch):
    old = timezone.now() - datetime.timedelta(days=1)
    BatchRange.objects.filter(batch=batch).exclude(claimed_by="").update(heartbeat_at=old)


def test_a_batch_is_split_once_into_ranges_of_the_set_size(user, split_by_three):
    batch = running(user, 7)
    assert ranges.split(batch) == 3
    assert spans(batch) == [(1, 4), (4, 7), (7, 8)]
    assert list(BatchRange.objects.filter(batch=batch).order_by("first_line").values_list("requests", flat=True)) == [
        3,
        3,
        1,
    ]
    assert ranges.split(batch) == 3  # again: the same ranges
    assert BatchRange.objects.filter(batch=batch).count() == 3


def test_ranges_count_requests_not_blank_lines_and_start_where_their_line_does(user, split_by_three):
    batch = make_batch(user, [chat_request("a"), chat_request("b")])
    # Blank lines in the file: line numbers count them, ranges count requests.
    lines = [json.dumps(chat_request(f"r{i}")) for i in range(4)]
    content = (lines[0] + "\n\n" + lines[1] + "\n" + lines[2] + "\n  \n" + lines[3] + "\n").encode()
    from django.core.files.storage import default_storage

    with default_storage.open(batch.input_file.storage_name, "wb") as stream:
        stream.write(content)
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=4)
    batch.refresh_from_db()

    ranges.split(batch)

    assert spans(batch) == [(1, 5), (6, 7)]
    second = BatchRange.objects.get(batch=batch, first_line=6)
    assert content[second.offset :].startswith(lines[3].encode())
    assert list(ranges.requests(batch, A)) == [(1, json.loads(lines[0])), (3, json.loads(lines[1])),
                                               (4, json.loads(lines[2])), (6, json.loads(lines[3]))]  # fmt: skip


def test_no_split_when_off_or_when_the_batch_fits_in_one_range(user, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "SPLIT_REQUESTS": 0}
    assert ranges.split(running(user, 7)) == 0
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "SPLIT_REQUESTS": 7}
    batch = running(user, 7)
    assert ranges.split(batch) == 0
    assert not ranges.is_split(batch.pk)


def test_two_workers_take_different_ranges_and_a_held_one_is_left_alone(user, split_by_three):
    batch = running(user, 7)
    ranges.split(batch)
    first, second = ranges.claim(batch.pk, A), ranges.claim(batch.pk, B)
    assert (first.first_line, second.first_line) == (1, 4)
    third = ranges.claim(batch.pk, A)
    assert third.first_line == 7
    assert ranges.claim(batch.pk, B) is None  # all held, all fresh


def test_a_stale_range_is_taken_over_and_a_done_one_never(user, split_by_three):
    batch = running(user, 4)
    ranges.split(batch)
    first = ranges.claim(batch.pk, A)
    BatchRange.objects.filter(pk=first.pk).update(done_at=timezone.now(), claimed_by="")
    ranges.claim(batch.pk, A)
    make_stale(batch)
    taken = ranges.claim(batch.pk, B)
    assert (taken.first_line, taken.claimed_by) == (4, B)
    assert ranges.claim(batch.pk, B) is None


def test_requests_take_the_next_range_only_when_asked_and_skip_saved_lines(user, split_by_three):
    batch = running(user, 7)
    ranges.split(batch)
    BatchResult.objects.create(batch=batch, line=2, custom_id="r1", text="{}")
    pending = ranges.requests(batch, A)
    assert next(pending)[0] == 1
    assert BatchRange.objects.filter(claimed_by=A).count() == 1
    assert [line for line, _ in pending] == [3, 4, 5, 6, 7]
    assert BatchRange.objects.filter(claimed_by=A).count() == 3


def test_a_range_whose_lines_are_all_saved_is_marked_done_when_taken(user, split_by_three):
    batch = running(user, 4)
    ranges.split(batch)
    BatchResult.objects.bulk_create(
        [BatchResult(batch=batch, line=line, custom_id=f"r{line}", text="{}") for line in (1, 2, 3)]
    )
    assert [line for line, _ in ranges.requests(batch, A)] == [4]
    assert BatchRange.objects.get(batch=batch, first_line=1).done_by == A


def test_results_are_saved_only_in_ranges_the_worker_holds(user, split_by_three):
    batch = running(user, 6)
    ranges.split(batch)
    ranges.claim(batch.pk, A)
    ranges.claim(batch.pk, B)

    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=A, rows=[row(1), row(4)], in_ranges=True)
    assert not BatchResult.objects.filter(batch=batch).exists()

    services.batch_results_save(batch_id=batch.pk, holder=A, rows=[row(1), row(2)], in_ranges=True)
    services.batch_results_save(batch_id=batch.pk, holder=B, rows=[row(4), row(5), row(6)], in_ranges=True)
    batch.refresh_from_db()
    assert (batch.completed_requests, batch.input_tokens, batch.output_tokens) == (5, 15, 25)
    first, second = BatchRange.objects.filter(batch=batch).order_by("first_line")
    assert (first.done_at, first.claimed_by) == (None, A)
    assert (second.done_by, second.claimed_by) == (B, "")
    assert second.done_at is not None
    assert ranges.left(batch.pk) == 1


def test_a_range_taken_over_is_not_saved_by_its_old_holder_nor_counted_twice(user, split_by_three):
    batch = running(user, 4)
    ranges.split(batch)
    ranges.claim(batch.pk, A)
    services.batch_results_save(batch_id=batch.pk, holder=A, rows=[row(1)], in_ranges=True)
    make_stale(batch)  # A paused past the stale limit
    assert ranges.claim(batch.pk, B).first_line == 1

    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=A, rows=[row(2), row(3)], in_ranges=True)
    services.batch_results_save(batch_id=batch.pk, holder=B, rows=[row(1), row(2), row(3)], in_ranges=True)
    batch.refresh_from_db()
    assert batch.completed_requests == 3
    assert BatchResult.objects.filter(batch=batch).count() == 3
    assert ranges.left(batch.pk) == 1  # lines 1-3 done, line 4 left


def test_nothing_is_saved_into_a_batch_that_ended(user, split_by_three):
    batch = running(user, 4)
    ranges.split(batch)
    ranges.claim(batch.pk, A)
    Batch.objects.filter(pk=batch.pk).update(status="cancelled")
    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=A, rows=[row(1)], in_ranges=True)
    assert not BatchResult.objects.filter(batch=batch).exists()


def test_release_frees_the_holders_ranges_that_are_not_done(user, split_by_three):
    batch = running(user, 6)
    ranges.split(batch)
    ranges.claim(batch.pk, A)
    ranges.claim(batch.pk, A)
    services.batch_results_save(batch_id=batch.pk, holder=A, rows=[row(1), row(2), row(3)], in_ranges=True)
    assert ranges.release(batch.pk, A) == 1
    assert ranges.claim(batch.pk, B).first_line == 4


def test_helpable_batches_have_a_free_range_of_a_model_the_worker_may_run(user, split_by_three):
    batch = running(user, 6)
    assert ranges.helpable() is None  # not split
    ranges.split(batch)
    assert ranges.helpable() == batch.pk
    assert ranges.helpable(allowed_models={"tiny-llama"}, held_model="tiny-llama") == batch.pk
    assert ranges.helpable(allowed_models={"other"}) is None
    assert ranges.helpable(held_model="other") is None
    ranges.claim(batch.pk, A)
    ranges.claim(batch.pk, A)
    assert ranges.helpable() is None  # all taken
    Batch.objects.filter(pk=batch.pk).update(status="cancelling")
    make_stale(batch)
    assert ranges.helpable() is None  # only running batches
