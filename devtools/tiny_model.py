"""Builds a tiny random-weight Llama with a locally trained BPE tokenizer, offline.

The embedded default model: small enough to load in seconds on a CPU, real enough
that vLLM runs its full path (chat template, tokenizer, sampling, structured output).
"""

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

WORDS = [
    "the",
    "a",
    "an",
    "model",
    "batch",
    "worker",
    "request",
    "answer",
    "label",
    "text",
    "data",
    "team",
    "prompt",
    "token",
    "engine",
    "positive",
    "negative",
    "neutral",
    "yes",
    "no",
    "maybe",
    "good",
    "bad",
    "fast",
    "slow",
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "bird",
    "paris",
    "london",
    "berlin",
    "tokyo",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "hello",
    "world",
    "review",
    "product",
    "movie",
    "great",
    "terrible",
    "okay",
    "love",
    "hate",
    "price",
    "quality",
    "service",
    "delivery",
    "json",
    "name",
    "value",
    "count",
    "list",
    "true",
    "false",
    "null",
    "question",
    "summary",
    "sentence",
    "word",
    "letter",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def _corpus(rng, lines=4000):
    punctuation = [".", ",", "?", "!", ":", '"', "{", "}", "[", "]", "0", "1", "2", "3", "42"]
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 16))]
        if rng.random() < 0.5:
            words.append(rng.choice(punctuation))
        yield " ".join(words)
    yield "".join(chr(c) for c in range(32, 127))


def build_tiny_model(path, *, vocab_size=2048, hidden_size=256, layers=2, heads=4, max_positions=2048, seed=0):
    """Writes config, weights and tokenizer to `path`; returns the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    torch.manual_seed(seed)

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(rng), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    generation_config = path / "generation_config.json"
    if generation_config.exists():
        data = json.loads(generation_config.read_text())
        data.pop("max_length", None)
        generation_config.write_text(json.dumps(data, indent=2))
    return path
