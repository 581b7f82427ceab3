"""Local embeddings: Switchyard's /v1/embeddings against llama.cpp's embedding
mode on the same GGUF, with last-token pooling on both sides.

Each round starts the daemon (a policy with the GGUF as an `embeddings: true`
backend) and a llama-cpp-python process (`embedding=True`,
`pooling_type=LAST`), both with --threads threads, warms each with one call,
then times --texts sentences embedded in one call (batched) and one call per
sentence. Rounds alternate the two sides; medians are printed, with the
cosine between the two sides' vectors (the same tokens, model and pooling
should give the same vectors, to float rounding and llama.cpp's own kernels).
"""

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars fade slowly above "
         "quiet northern hills and rivers carry small boats toward the sleeping town").split()


def texts(n, words):
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) for i in range(n)]


LLAMA_CPP_RUN = textwrap.dedent(
    """
    import json, sys, time
    import llama_cpp
    model, threads, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=2048,
                          n_ubatch=2048, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, verbose=False)
    llm.embed(texts[:1], normalize=True)
    start = time.perf_counter()
    batched = llm.embed(texts, normalize=True)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    for text in texts:
        llm.embed(text, normalize=True)
    single_s = time.perf_counter() - start
    print(json.dumps({"batched": len(texts) / batched_s, "single": len(texts) / single_s, "first": batched[0]}))
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.load(reply)


def ours(binary, model, threads, sentences):
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        policy = os.path.join(scratch, "policy.yaml")
        with open(policy, "w") as f:
            f.write(f"server:\n  listen: 127.0.0.1:{port}\nbackends:\n  local:\n    - name: embed\n"
                    f"      model_path: {os.path.abspath(model)}\n      threads: {threads}\n      context_length: 2048\n"
                    f"      embeddings: true\nrouting:\n  local_backend: embed\n")
        daemon = subprocess.Popen([binary, "serve", "--policy", policy], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=1):
                        break
                except Exception:
                    time.sleep(0.1)
            embed = lambda inputs: post(url + "/v1/embeddings", {"model": "embed", "input": inputs, "encoding_format": "float"})
            embed(sentences[:1])
            start = time.perf_counter()
            batched = embed(sentences)
            batched_s = time.perf_counter() - start
            start = time.perf_counter()
            for text in sentences:
                embed(text)
            single_s = time.perf_counter() - start
            return {"batched": len(sentences) / batched_s, "single": len(sentences) / single_s,
                    "first": batched["data"][0]["embedding"]}
        finally:
            daemon.terminate()
            daemon.wait()


def theirs(python, model, threads, sentences):
    out = subprocess.run([python, "-c", LLAMA_CPP_RUN, model, str(threads), json.dumps(sentences)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"llama.cpp failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="a GGUF (repeatable)")
    ap.add_argument("--switchyard", required=True)
    ap.add_argument("--python", required=True, help="a Python with llama_cpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--words", type=int, default=24)
    args = ap.parse_args()
    sentences = texts(args.texts, args.words)
    print(f"{args.texts} sentences of {args.words} words, {args.threads} threads, median of {args.runs} alternating rounds")
    print("| model | Switchyard batched /s | llama.cpp batched /s | ratio | Switchyard one by one /s | llama.cpp one by one /s | ratio | cosine |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.model:
        a, b = [], []
        for _ in range(args.runs):
            a.append(ours(args.switchyard, model, args.threads, sentences))
            b.append(theirs(args.python, model, args.threads, sentences))
        med = lambda runs, key: statistics.median(r[key] for r in runs)
        print(f"| {os.path.basename(model)} | {med(a, 'batched'):.1f} | {med(b, 'batched'):.1f} | "
              f"{med(a, 'batched') / med(b, 'batched'):.2f}x | {med(a, 'single'):.1f} | {med(b, 'single'):.1f} | "
              f"{med(a, 'single') / med(b, 'single'):.2f}x | {cosine(a[0]['first'], b[0]['first']):.4f} |")


if __name__ == "__main__":
    main()
