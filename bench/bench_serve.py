"""`yollava serve` on `pocket`, on this CPU, against a fresh `yollava ask` in the same run.

1. First streamed words: a fresh `yollava ask` process (from launch to its first byte on stdout)
   vs a warm server (from the request to its first content chunk), alternated, medians
   (target: the server <= 0.2x).
2. 8 concurrent clients x 10 requests each: all answered? throughput, p50/p95 latency.
3. Memory: the server's RSS over 1,000 short requests (4 clients), sampled every 100; flat means
   the last sample within 1.1x of the one after warm-up (the first 100).
The base model, no concept: a concept adds its facts and verdicts to the prompt, not to the cost of
serving. Records the CPU and the load average before and after.
Run:  python bench/bench_serve.py  (writes bench/results/serve.json)
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from measure import where

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What should I buy my dog for his birthday?"


def fresh_ask_first_output(env: dict, max_tokens: int) -> float:
    """Seconds from launching `yollava ask` to the first byte of its answer on stdout."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "yollava_cli", "ask", QUESTION, "--max-tokens", str(max_tokens)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    process.stdout.read(1)
    first = time.perf_counter() - start
    process.stdout.read()
    assert process.wait() == 0
    return first


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "yollava_cli", "serve", "--port", "0", "--queue", "64"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in process.stderr:
        if " listening " in line:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # keep draining the log
            return process, re.search(r"url=(\S+)", line).group(1)
    raise SystemExit("the server did not start")


def streamed_first_chunk(client, max_tokens: int) -> float:
    start = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(model="pocket", messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=max_tokens, stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first


def one_request(client, question: str, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    reply = client.chat.completions.create(model="pocket", messages=[{"role": "user", "content": question}],
                                           max_tokens=max_tokens)
    return time.perf_counter() - start, reply.usage.completion_tokens


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def concurrent_load(client, clients: int, each: int, max_tokens: int) -> dict:
    questions = [f"{QUESTION} He is {age} years old." for age in range(clients * each)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda q: one_request(client, q, max_tokens), questions))
    wall = time.perf_counter() - start
    latencies = sorted(seconds for seconds, _ in done)
    return {"clients": clients, "requests_each": each, "max_tokens": max_tokens, "answered": len(done),
            "wall_s": round(wall, 2), "requests_per_s": round(len(done) / wall, 3),
            "tokens_per_s": round(sum(tokens for _, tokens in done) / wall, 2),
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3)}


def memory_over(client, pid: int, requests: int, max_tokens: int) -> dict:
    samples, lock = [], threading.Lock()
    count = [0]

    def one(i: int) -> None:
        one_request(client, f"Name a toy number {i} for a dog.", max_tokens)
        with lock:
            count[0] += 1
            if count[0] % 100 == 0:
                samples.append(round(rss_mb(pid), 1))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(requests)))
    warm = samples[0]
    return {"requests": requests, "max_tokens": max_tokens, "rss_mb_every_100": samples,
            "last_over_warm": round(samples[-1] / warm, 3), "max_over_warm": round(max(samples) / warm, 3),
            "flat_within_1_1x": max(samples) / warm <= 1.1}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    import openai

    home = tempfile.mkdtemp(prefix="yollava-bench-serve-")
    env = {**os.environ, "YOLLAVA_HOME": home, "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()
    fresh_ask_first_output(env, 1)  # builds pocket in the data dir: neither side pays for that
    server, url = start_server(env)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        streamed_first_chunk(client, args.max_tokens)  # warm: the first answer's one-time work
        fresh, served = [], []
        for _ in range(args.repeats):
            fresh.append(fresh_ask_first_output(env, args.max_tokens))
            served.append(streamed_first_chunk(client, args.max_tokens))
        first = {"fresh_ask_s": round(statistics.median(fresh), 3), "server_s": round(statistics.median(served), 3),
                 "runs_fresh_ask_s": [round(s, 3) for s in fresh], "runs_server_s": [round(s, 3) for s in served]}
        first["server_over_fresh_ask"] = round(first["server_s"] / first["fresh_ask_s"], 3)
        load = concurrent_load(client, 8, 10, args.max_tokens)
        memory = memory_over(client, server.pid, args.requests, 4)
    finally:
        server.terminate()
        server.wait(30)
    result = {"where": where(), "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "model": "pocket", "question": QUESTION,
              "first_streamed_words": first, "concurrent": load, "memory": memory,
              "worker": "one thread answers one request at a time; the rest wait in a bounded queue"}
    out = REPO / "bench" / "results" / "serve.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
