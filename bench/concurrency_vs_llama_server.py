"""Many streaming clients at once on the local model: Switchyard's daemon and
llama.cpp's llama-server (continuous batching, as many slots as clients),
same GGUF, same threads, same prompts, greedy, side by side.

For each concurrency N, N clients each stream ROUNDS chat completions one
after another; the figures are the aggregate decode rate (completion tokens of
all clients over the wall time) and the time to first token (first content
delta), p50 and p99 over every request. Ratios are ours over llama-server's.

Usage: python concurrency_vs_llama_server.py OURS_URL OURS_MODEL LLAMA_URL \\
           --clients N [--rounds 3] [--max-tokens 64] [--header] [--single TOK_S]
prints one table row (the .sh beside it starts both servers, llama-server
with N slots for each N, and passes the one-client rate as --single).
"""

import argparse
import asyncio
import json
import time

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List ten fruits and describe each in a sentence.",
    "Describe the water cycle for a ten-year-old.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain what a database index is.",
    "Tell me about the history of the printing press.",
    "Give advice for someone learning to cook.",
]


async def one(client, url, model, prompt, max_tokens):
    """One streamed answer: (time to first content, completion tokens, seconds, prompt tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # A model that thinks natively (Qwen3's template) answers without thinking on
        # both servers: our daemon's default for the local tier, said to llama-server
        # too, so both render the same prompt. Other templates ignore it.
        "chat_template_kwargs": {"enable_thinking": False},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    prompt_tokens = 0
    deltas = 0
    async with client.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                deltas += 1
                if first is None:
                    first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens", 0)
                prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
    elapsed = time.perf_counter() - started
    return first if first is not None else elapsed, tokens or deltas, elapsed, prompt_tokens


async def run(url, model, clients, rounds, max_tokens):
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        # Warm-up: one request, not counted.
        await one(client, url, model, PROMPTS[0], 8)
        ttfts, total_tokens, prompt_tokens = [], 0, []

        async def worker(i):
            nonlocal total_tokens
            for r in range(rounds):
                ttft, tokens, _, prompt = await one(client, url, model, PROMPTS[(i + r) % len(PROMPTS)], max_tokens)
                ttfts.append(ttft)
                total_tokens += tokens
                prompt_tokens.append(prompt)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - started
    ttfts.sort()
    pick = lambda q: ttfts[min(len(ttfts) - 1, round(q * (len(ttfts) - 1)))]
    # Prompt tokens (the template's and the prompt's, as the server counted them): both
    # servers should see the same prompts, whatever the model's tokenizer makes of them.
    return {"tok_s": total_tokens / wall, "ttft_p50": pick(0.5), "ttft_p99": pick(0.99), "tokens": total_tokens,
            "requests": len(ttfts), "prompt_tokens_mean": sum(prompt_tokens) / max(1, len(prompt_tokens))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ours")
    parser.add_argument("model")
    parser.add_argument("llama")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--header", action="store_true")
    parser.add_argument("--single", type=float, default=None, help="our one-client tok/s")
    args = parser.parse_args()
    if args.header:
        print("| clients | ours tok/s (x one client) | llama-server tok/s | ours / llama-server | ours TTFT p50 / p99 (s) | llama-server TTFT p50 / p99 (s) |")
        print("|---|---|---|---|---|---|")
    n = args.clients
    ours = asyncio.run(run(args.ours, args.model, n, args.rounds, args.max_tokens))
    theirs = asyncio.run(run(args.llama, "local", n, args.rounds, args.max_tokens))
    single = args.single or ours["tok_s"]
    print(
        f"| {n} | {ours['tok_s']:.1f} ({ours['tok_s'] / single:.2f}x) | {theirs['tok_s']:.1f} | "
        f"{ours['tok_s'] / theirs['tok_s']:.2f}x | {ours['ttft_p50']:.3f} / {ours['ttft_p99']:.3f} | "
        f"{theirs['ttft_p50']:.3f} / {theirs['ttft_p99']:.3f} |",
        flush=True,
    )
    print(json.dumps({"clients": n, "ours": ours, "llama_server": theirs}), file=__import__("sys").stderr)


if __name__ == "__main__":
    main()
