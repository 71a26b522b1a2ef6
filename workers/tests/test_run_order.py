"""The order a batch's requests go to the engine (workers.runner.in_run_order), and
that the output keeps the input's order whatever it is."""

from jobs.models import BatchResult
from jobs.tests.factories import chat_request, custom_ids, make_batch, read_jsonl
from workers.engine.types import GenerateItem
from workers.runner import in_run_order, process_batch


def chat_item(key, max_tokens=None, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": key}]
    sampling = {"max_tokens": max_tokens} if max_tokens else {}
    return GenerateItem(key=key, sampling=sampling, chat=messages)


def keys(items):
    return [item.key for item in items]


def test_longest_first_then_shared_first_messages_together_stable_among_equals():
    items = [
        chat_item("a", 16, "S1"),
        chat_item("b", 256, "S2"),
        chat_item("c", 16, "S2"),
        chat_item("d", 256, "S1"),
        chat_item("e", 16, "S1"),
        chat_item("f", None, "S1"),  # no max_tokens: up to the context, the longest
    ]
    assert keys(in_run_order(items, 100)) == ["f", "d", "b", "a", "e", "c"]


def test_sorted_within_blocks_of_the_lookahead_only():
    items = [chat_item(f"{i}", max_tokens) for i, max_tokens in enumerate([8, 64, 16, 32, 128, 4, 256])]
    assert keys(in_run_order(items, 3)) == ["1", "2", "0", "4", "3", "5", "6"]


def test_lookahead_zero_keeps_file_order_and_reads_lazily():
    pulled = []

    def source():
        for i, max_tokens in enumerate([8, 64, 16]):
            pulled.append(i)
            yield chat_item(f"{i}", max_tokens)

    ordered = in_run_order(source(), 0)
    assert next(ordered).key == "0" and pulled == [0]
    assert keys(ordered) == ["1", "2"]


def test_completion_prompts_group_by_prompt_and_token_id_prompts_sort_last_among_equals():
    items = [
        GenerateItem(key="x", sampling={"max_tokens": 8}, prompt="beta"),
        GenerateItem(key="y", sampling={"max_tokens": 8}, prompt=[1, 2, 3]),
        GenerateItem(key="z", sampling={"max_tokens": 8}, prompt="alpha"),
    ]
    assert keys(in_run_order(items, 10)) == ["y", "z", "x"]


def test_a_batch_fed_longest_first_writes_its_output_in_input_order(settings, user, chat_model, engine):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "RUN_ORDER_LOOKAHEAD": 2048, "CHUNK_SIZE": 3}
    lengths = [4, 64, 8, 256, 16, 32, 128, 2, 512, 1]
    batch = make_batch(user, [chat_request(f"r{i}", max_tokens=n) for i, n in enumerate(lengths)])

    assert process_batch(batch.pk, holder="test:1") == "completed"

    batch.refresh_from_db()
    assert [item.sampling["max_tokens"] for item in engine.fake().items] == sorted(lengths, reverse=True)
    assert custom_ids(read_jsonl(batch.output_file_id)) == [f"r{i}" for i in range(len(lengths))]
    assert (batch.completed_requests, batch.failed_requests) == (len(lengths), 0)
    assert not BatchResult.objects.filter(batch=batch).exists()
