"""The added cost per generated token of constrained decoding, Switchyard's grammar constraint
(llguidance) against llama.cpp's grammar sampling (llama-cpp-python), on the same GGUF, prompt and
JSON schema, with and without a schema (`json_object`: any JSON object). Driven by
bench/constraint_cost.sh; each step is a subcommand so each runs in the Python it needs.

  gguf OUT.gguf   write the tiny random Qwen3.5 with Qwen3.5's 248,320-token vocabulary
                  (PyPI `gguf`, numpy; no torch)
  llama ...       one llama.cpp run (the llama-cpp-python venv); prints one JSON line
  bench ...       both engines, alternating rounds; prints the table

What is measured
----------------
A grammar's cost is per token and depends on the vocabulary and the grammar, not on the weights,
so it is measured as a difference between two runs that do the same work apart from the grammar:

* the constrained run: greedy from the chat prompt under `json_object` or the schema, to the
  grammar's end; it generates N tokens (the same N every round: greedy);
* the free run just after it: the same prompt, greedy, exactly N tokens, through end-of-turn tokens
  (ours `--ignore-eos`; llama.cpp's token generator, which does not stop by itself).

Both runs hold the same number of tokens at the same positions, so the step's forward pass is the
same and the difference of their times per decoded token (prefill excluded) is the constraint's
cost: checking and masking, advancing the automaton, and its fixed cost per answer spread over N.
The figure is the median over rounds of that paired difference (each pair is adjacent in time, so
slow drift on a shared machine cancels), in µs per token, and as a share of a decode step: the
same engine's free step on that model, and for the 248k vocabulary a real Qwen3.5-2B step.

Ours: `switchyard generate --json` (its decode rate: (tokens - 1) / the decode loop's time, which
holds the sampling and grammar work of every token). llama.cpp: `Llama.generate` with
`LlamaGrammar` (JSON_GBNF for `json_object`, `LlamaGrammar.from_json_schema` for the schema), the
sampler chain `create_completion` and `response_format` use; the time from the first token to
the last, over N - 1. Every constrained answer must parse as JSON (and the schema's must hold its
shape), else the run stops: both engines really constrain.

The 248k vocabulary without torch
---------------------------------
`gguf` copies engine/tests/fixtures/qwen/qwen3_5.gguf (a tiny random Qwen3.5 written by llama.cpp's
own converter: `qwen35` metadata and tensors, 4 layers, hidden 64, F32) and replaces its
vocabulary with bench/qwen35_vs_llama_cpp.py's 248,320-token tokenizer (Qwen3.5's added tokens
at 248044.., padding after them), written as the converter writes a GPT-2 BPE vocabulary (tokens,
token types: normal 1, control 3 (special, or spelled <|...|>), user-defined 4, padding 5 as
`[PADn]`; merges; eos <|im_end|>, padding <|endoftext|>), and its token embedding with 248,320 random rows (tied output). The
output head is then most of a step, as it is at this vocabulary; only the grammar's cost is read
off this model. Its ordinary tokens are byte symbols and " a".." zzzz"-style words, not Qwen's
real merges: the trie has Qwen's size, not its shape.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VOCAB_248K = 248320

# Bounded answers on both sides: three objects with strings of at most 24 characters (llama.cpp's
# schema converter writes the string bounds into its grammar but drops the integer's, leaving at
# most 16 digits; llguidance keeps both).
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 3,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "city": {"type": "string", "maxLength": 24},
                },
                "required": ["name", "age", "city"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}
# SmolLM2 answers this one with a JSON object under either grammar. (Asked "Name three people with
# their age and city, as JSON.", its `json_object` answer here is `{",": 3}`: it would write "{\n",
# which our layout refuses.)
PROMPT = "Write a JSON object with a list of three people, each with a name, an age and a city."
MODES = ("json_object", "schema")


def check_answer(mode, text, side):
    """A constrained answer parses, and the schema's has its shape (the schema's own checks)."""
    try:
        value = json.loads(text)
    except ValueError as err:
        sys.exit(f"{side} {mode}: the answer does not parse ({err}): {text!r}")
    ok = isinstance(value, dict)
    if mode == "schema":
        people = value.get("people") if ok else None
        ok = set(value) == {"people"} and isinstance(people, list) and len(people) == 3 and all(
            isinstance(p, dict) and set(p) == {"name", "age", "city"} and isinstance(p["name"], str)
            and len(p["name"]) <= 24 and isinstance(p["city"], str) and len(p["city"]) <= 24
            and isinstance(p["age"], int) for p in people)
    if not ok:
        sys.exit(f"{side} {mode}: the answer is not what the grammar allows: {text!r}")


# ---------------------------------------------------------------------------------------------
# The 248k-vocabulary GGUF (gguf venv)


def cmd_gguf(args):
    import gguf
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    sys.dont_write_bytecode = True
    import qwen35_vs_llama_cpp as q35

    fixture = gguf.GGUFReader(REPO / "engine/tests/fixtures/qwen/qwen3_5.gguf")
    tokenizer, tok_config = q35.tokenizer_files(VOCAB_248K)
    vocab = tokenizer["model"]["vocab"]
    tokens = [None] * VOCAB_248K
    types = [gguf.TokenType.NORMAL] * VOCAB_248K
    for text, i in vocab.items():
        tokens[i] = text
    for added in tokenizer["added_tokens"]:
        tokens[added["id"]] = added["content"]
        # As the converter: special tokens, and added ones spelled <|...|>, are control tokens.
        control = added["special"] or (added["content"].startswith("<|") and added["content"].endswith("|>"))
        types[added["id"]] = gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    ids = {t: i for i, t in enumerate(tokens)}

    arch = fixture.fields["general.architecture"].contents()
    out = gguf.GGUFWriter(args.out, arch)
    replaced = {"general.architecture", "general.name", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.chat_template"}
    for key, field in fixture.fields.items():
        if key.startswith("GGUF.") or key in replaced:
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            out.add_key_value(key, field.contents(), kind, sub_type=field.types[-1])
        else:
            out.add_key_value(key, field.contents(), kind)
    out.add_name("qwen35-tiny-248k")
    out.add_token_list(tokens)
    out.add_token_types(types)
    out.add_token_merges(merges)
    out.add_eos_token_id(ids["<|im_end|>"])
    out.add_pad_token_id(ids["<|endoftext|>"])
    out.add_chat_template(tok_config["chat_template"])
    rng = np.random.default_rng(1235)
    hidden = int(fixture.fields[f"{arch}.embedding_length"].contents())
    for tensor in fixture.tensors:
        data = np.array(tensor.data)
        if tensor.name == "token_embd.weight":
            data = rng.normal(0.0, 0.02, size=(VOCAB_248K, hidden)).astype(np.float32)
        assert tensor.name != "output.weight", "the fixture ties its output to the embedding"
        out.add_tensor(tensor.name, data, raw_dtype=tensor.tensor_type)
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()
    print(f"gguf: wrote {args.out} ({VOCAB_248K} tokens, hidden {hidden})", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# One llama.cpp run (llama-cpp-python venv)


def cmd_llama(args):
    import jinja2.sandbox
    import llama_cpp
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    llm = llama_cpp.Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=1024, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    # The chat template as Hugging Face renders it (and ours: thinking off when asked).
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    prompt = env.from_string(template).render(messages=[{"role": "user", "content": PROMPT}],
                                              add_generation_prompt=True,
                                              enable_thinking=not args.thinking_off)
    prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    grammar = {"free": lambda: None,
               "json_object": lambda: LlamaGrammar.from_string(JSON_GBNF, verbose=False),
               "schema": lambda: LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)}[args.mode]()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids, times = [], []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                              grammar=grammar):
        if args.mode != "free" and llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        times.append(time.perf_counter())
        ids.append(token)
        if len(ids) >= args.max_tokens:
            break
    text = llm.detokenize(ids).decode("utf-8", errors="replace")
    print(json.dumps({"tokens": len(ids), "ms_per_token": 1000 * (times[-1] - times[0]) / (len(ids) - 1),
                      "text": text}))


# ---------------------------------------------------------------------------------------------
# The benchmark


def run_ours(args, mode, max_tokens):
    argv = [args.switchyard, "generate", "--model", args.model, "--prompt", PROMPT, "--max-tokens",
            str(max_tokens), "--temperature", "0", "--threads", str(args.threads), "--json"]
    argv += ["--thinking", "off"] if args.thinking_off else []
    argv += {"free": ["--ignore-eos"], "json_object": ["--json-object"],
             "schema": ["--json-schema", args.schema_file]}[mode]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"switchyard failed:\n{out.stderr}")
    report = json.loads(out.stdout)
    return {"tokens": len(report["tokens"]), "ms_per_token": 1000 / report["decode_tokens_per_s"],
            "text": report["text"]}


def run_llama(args, mode, max_tokens):
    argv = [args.python, __file__, "llama", "--model", args.model, "--threads", str(args.threads), "--mode", mode,
            "--max-tokens", str(max_tokens)]
    argv += ["--thinking-off"] if args.thinking_off else []
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"llama.cpp failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmd_bench(args):
    Path(args.schema_file).write_text(json.dumps(SCHEMA))
    sides = (("ours", "Switchyard", run_ours), ("llama", "llama.cpp", run_llama))
    # (side, mode) -> per round: (constrained result, free result of the same length)
    pairs = {(side, mode): [] for side, _, _ in sides for mode in MODES}
    for round_ in range(args.runs):
        order = sides if round_ % 2 == 0 else sides[::-1]
        for side, name, run in order:
            for mode in MODES:
                constrained = run(args, mode, args.max_tokens)
                check_answer(mode, constrained["text"], name)
                free = run(args, "free", constrained["tokens"])
                assert free["tokens"] == constrained["tokens"], (name, mode, free["tokens"], constrained["tokens"])
                pairs[(side, mode)].append((constrained, free))
                print(f"round {round_ + 1} {name} {mode}: {constrained['tokens']} tokens, "
                      f"{constrained['ms_per_token']:.3f} vs free {free['ms_per_token']:.3f} ms/token",
                      file=sys.stderr)

    reference = {"ours": args.reference_step_ms_ours, "llama": args.reference_step_ms_llama}
    print(f"{Path(args.model).name}: {args.threads} threads, median of {args.runs} alternating rounds; "
          f"added = (constrained - free) per decoded token, the same N tokens")
    ref_head = " | % of a Qwen3.5-2B step" if args.reference_step_ms_ours else ""
    print(f"| engine | grammar | tokens | free ms/token | constrained ms/token | added µs/token | "
          f"% of its step{ref_head} |")
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if ref_head else ""))
    added = {}
    for side, name, _ in sides:
        for mode in MODES:
            runs = pairs[(side, mode)]
            diff_us = statistics.median(1000 * (c["ms_per_token"] - f["ms_per_token"]) for c, f in runs)
            free_ms = statistics.median(f["ms_per_token"] for _, f in runs)
            constrained_ms = statistics.median(c["ms_per_token"] for c, _ in runs)
            tokens = sorted({c["tokens"] for c, _ in runs})
            added[(side, mode)] = diff_us
            row = (f"| {name} | {mode} | {'/'.join(map(str, tokens))} | {free_ms:.3f} | {constrained_ms:.3f} | "
                   f"{diff_us:+.0f} | {diff_us / 10 / free_ms:+.1f}% |")
            if ref_head:
                row += f" {diff_us / 10 / reference[side]:+.2f}% |"
            print(row)
    for mode in MODES:
        ours, theirs = added[("ours", mode)], added[("llama", mode)]
        ratio = f"{ours / theirs:.3f}x" if theirs > 0 else "n/a (llama.cpp's added cost is not above zero)"
        print(f"{mode}: Switchyard's added cost per token is {ratio} llama.cpp's")
    if ref_head:
        print(f"(a Qwen3.5-2B Q6_K step: ours {args.reference_step_ms_ours} ms, llama.cpp "
              f"{args.reference_step_ms_llama} ms; docs/engine.md, OURS_ON_GGUF=1 bench/qwen35_vs_llama_cpp.sh 2 3 128)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gguf")
    g.add_argument("out")
    ll = sub.add_parser("llama")
    ll.add_argument("--model", required=True)
    ll.add_argument("--threads", type=int, required=True)
    ll.add_argument("--mode", choices=("free",) + MODES, required=True)
    ll.add_argument("--max-tokens", type=int, required=True)
    ll.add_argument("--thinking-off", action="store_true")
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--switchyard", required=True)
    b.add_argument("--python", required=True, help="the llama-cpp-python venv's python")
    b.add_argument("--schema-file", required=True)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--max-tokens", type=int, default=256, help="a cap; the answers end before it")
    b.add_argument("--thinking-off", action="store_true", help="for a model that thinks (Qwen3.5)")
    b.add_argument("--reference-step-ms-ours", type=float, help="a real model's decode step, ours")
    b.add_argument("--reference-step-ms-llama", type=float, help="the same, llama.cpp's")
    args = ap.parse_args()
    {"gguf": cmd_gguf, "llama": cmd_llama, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
