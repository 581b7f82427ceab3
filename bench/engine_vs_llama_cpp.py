"""Runs Switchyard's engine and llama.cpp on one GGUF and prints their figures and ratios.

Each measurement is its own process, so peak RSS is that process's alone
(ru_maxrss from wait4), and the two sides alternate run by run. Prefill is timed on a prompt of exactly
--prompt-tokens tokens; decode is the greedy generation of --decode-tokens
tokens after it (end-of-turn ignored on both sides' budgets: the prompt is
plain text, so the models keep writing). Medians over --runs runs are reported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

LLAMA_CPP_RUN = textwrap.dedent(
    """
    import json, sys, time
    import llama_cpp
    model, threads, prompt, decode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                          n_batch=512, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    start = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - start
    generated = 0
    start = time.perf_counter()
    for _ in range(decode):
        token = llm.sample(temp=0.0)
        llm.eval([token])
        generated += 1
    decode_s = time.perf_counter() - start
    print(json.dumps({"prompt_tokens": len(tokens), "prefill_tokens_per_s": len(tokens) / prefill,
                      "decode_tokens_per_s": generated / decode_s}))
    """
)


def run_once(argv):
    """Runs one measurement process; returns its JSON report and its own peak RSS in MiB."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.stdout.read(), child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{argv[0]} failed ({child.returncode}):\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def summary(runs):
    results = [r for r, _ in runs]
    prompt = results[0]["prompt_tokens"]
    return {
        "prompt_tokens": prompt if isinstance(prompt, int) else len(prompt),
        "prefill": statistics.median(r["prefill_tokens_per_s"] for r in results),
        "decode": statistics.median(r["decode_tokens_per_s"] for r in results),
        "rss_mib": statistics.median(rss for _, rss in runs),
    }


def prompt_of(model, n_tokens):
    """Plain English text that llama.cpp's tokenizer turns into exactly n_tokens tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    base = (
        "The history of the railway is a story of engineering, commerce and people. "
        "Switching yards sorted freight cars onto the right trains, one track at a time. "
    )
    words = (base * 200).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(llm.tokenize(" ".join(words[:mid]).encode(), add_bos=False, special=True)) < n_tokens:
            lo = mid + 1
        else:
            hi = mid
    text = " ".join(words[:lo])
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    while len(tokens) > n_tokens:
        text = text[:-1]
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    return text, len(tokens)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--switchyard", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--ndarray", action="store_true",
                        help="also run Switchyard on Burn's NdArray backend (a build with the ndarray feature)")
    args = parser.parse_args()

    text, n = prompt_of(args.model, args.prompt_tokens)
    ours_argv = [args.switchyard, "generate", "--model", args.model, "--raw-prompt", text, "--max-tokens",
                 str(args.decode_tokens), "--temperature", "0", "--threads", str(args.threads), "--json", "--ignore-eos"]
    theirs_argv = [sys.executable, "-c", LLAMA_CPP_RUN, args.model, str(args.threads), text, str(args.decode_tokens)]
    ndarray_argv = ours_argv + ["--backend", "ndarray"]
    # Alternate the sides (A B A B ...) so a change in machine load hits all alike.
    ours_runs, theirs_runs, ndarray_runs = [], [], []
    for _ in range(args.runs):
        ours_runs.append(run_once(ours_argv))
        theirs_runs.append(run_once(theirs_argv))
        if args.ndarray:
            ndarray_runs.append(run_once(ndarray_argv))
    ours, theirs = summary(ours_runs), summary(theirs_runs)
    size_mib = os.path.getsize(args.model) / (1 << 20)
    print(f"model {os.path.basename(args.model)} ({size_mib:.1f} MiB), {args.threads} threads, "
          f"prompt {n} tokens, {args.decode_tokens} decoded, median of {args.runs} runs")
    print(f"{'':14}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MiB':>14}")
    print(f"{'switchyard':14}{ours['prefill']:15.1f}{ours['decode']:14.1f}{ours['rss_mib']:14.1f}")
    print(f"{'llama.cpp':14}{theirs['prefill']:15.1f}{theirs['decode']:14.1f}{theirs['rss_mib']:14.1f}")
    if args.ndarray:
        nd = summary(ndarray_runs)
        print(f"{'sy on ndarray':14}{nd['prefill']:15.1f}{nd['decode']:14.1f}{nd['rss_mib']:14.1f}")
        print(f"{'flex/ndarray':14}{ours['prefill'] / nd['prefill']:14.2f}x{ours['decode'] / nd['decode']:13.2f}x"
              f"{ours['rss_mib'] / nd['rss_mib']:13.2f}x")
    print(f"{'vs llama.cpp':14}{ours['prefill'] / theirs['prefill']:14.2f}x{ours['decode'] / theirs['decode']:13.2f}x"
          f"{ours['rss_mib'] / theirs['rss_mib']:13.2f}x")
    print(f"switchyard peak RSS / file size: {ours['rss_mib'] / size_mib:.2f}x")


if __name__ == "__main__":
    main()
