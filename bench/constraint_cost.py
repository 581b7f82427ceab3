"""The cost of constrained decoding per generated token, Switchyard against
llama.cpp's grammar sampling, on the same GGUF, prompt and schemas.

Each side decodes greedily (temperature 0) from the same chat prompt, free,
under `json_object` (any JSON object; llama.cpp: its JSON grammar), and under
a JSON schema (llama.cpp: `LlamaGrammar.from_json_schema`), one process per
run, rounds alternating. The figure is the time per decoded token (prefill
excluded: Switchyard's own decode rate; llama.cpp's from its first streamed
token to its last), median over the rounds, and the added cost of each
constraint against the free run on the same side.
"""

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
PROMPT = "Describe a person as JSON."

LLAMA_CPP_RUN = textwrap.dedent(
    """
    import json, sys, time
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar, JSON_GBNF
    model, threads, mode, schema, prompt, max_tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    grammar = {"free": None, "json_object": lambda: LlamaGrammar.from_string(JSON_GBNF, verbose=False),
               "schema": lambda: LlamaGrammar.from_json_schema(schema, verbose=False)}[mode]
    grammar = grammar() if grammar else None
    times, text = [], ""
    for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0.0, grammar=grammar, stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            times.append(time.perf_counter())
            text += piece
    per_token = (times[-1] - times[0]) / (len(times) - 1)
    print(json.dumps({"ms_per_token": per_token * 1000, "tokens": len(times), "text": text}))
    """
)


def ours(binary, model, threads, mode, schema_path, max_tokens, thinking_off):
    argv = [binary, "generate", "--model", model, "--prompt", PROMPT, "--max-tokens", str(max_tokens),
            "--temperature", "0", "--threads", str(threads), "--json"]
    argv += ["--thinking", "off"] if thinking_off else []
    argv += {"free": [], "json_object": ["--json-object"], "schema": ["--json-schema", schema_path]}[mode]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"switchyard failed:\n{out.stderr}")
    report = json.loads(out.stdout)
    return {"ms_per_token": 1000 / report["decode_tokens_per_s"], "text": report["text"]}


def theirs(python, model, threads, mode, max_tokens):
    out = subprocess.run([python, "-c", LLAMA_CPP_RUN, model, str(threads), mode, json.dumps(SCHEMA), PROMPT, str(max_tokens)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"llama.cpp failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--switchyard", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--schema-file", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--thinking-off", action="store_true", help="for a model that thinks (Qwen3, Qwen3.5)")
    args = ap.parse_args()
    with open(args.schema_file, "w") as f:
        json.dump(SCHEMA, f)
    modes = ["free", "json_object", "schema"]
    runs = {(side, mode): [] for side in ("ours", "theirs") for mode in modes}
    for _ in range(args.runs):
        for mode in modes:
            runs[("ours", mode)].append(ours(args.switchyard, args.model, args.threads, mode, args.schema_file, args.max_tokens, args.thinking_off))
            runs[("theirs", mode)].append(theirs(args.python, args.model, args.threads, mode, args.max_tokens))
    for (side, mode), results in runs.items():
        if mode != "free":
            for r in results:
                json.loads(r["text"])  # a constrained answer must parse (cut answers would fail here)
    med = {key: statistics.median(r["ms_per_token"] for r in results) for key, results in runs.items()}
    print(f"{args.model}: ms per decoded token, median of {args.runs} alternating rounds, {args.threads} threads")
    print("| | free | json_object (added) | schema (added) |")
    print("|---|---:|---:|---:|")
    for side, name in (("ours", "Switchyard"), ("theirs", "llama.cpp")):
        free = med[(side, "free")]
        cells = [f"{med[(side, m)]:.3f} ({100 * (med[(side, m)] - free) / free:+.1f}%)" for m in modes[1:]]
        print(f"| {name} | {free:.3f} | {cells[0]} | {cells[1]} |")
    for m in modes[1:]:
        ratio = med[("ours", m)] / med[("theirs", m)]
        print(f"{m}: Switchyard's constrained step takes {ratio:.2f}x llama.cpp's")


if __name__ == "__main__":
    main()
