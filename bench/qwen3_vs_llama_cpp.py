"""Qwen3-1.7B-shaped random checkpoint (QWEN3_SHAPE=0.6b: Qwen3-0.6B's shape): Switchyard's engine against llama.cpp, and the
machine's memory-bandwidth ceiling. Driven by bench/qwen3_vs_llama_cpp.sh; each step is a
subcommand so each runs in the Python environment it needs.

  checkpoint DIR        write a random Qwen3-1.7B Hugging Face directory (BF16 safetensors,
                        config.json, tokenizer.json); numpy + regex (the converter's venv)
  convert DIR OUT.gguf  llama.cpp's own convert_hf_to_gguf.py, --outtype bf16 (converter venv)
  quantize IN OUT TYPE  llama.cpp's llama_model_quantize, TYPE q6_k or q4_k, pure (llama.cpp venv)
  bandwidth WORKDIR     compile and run a small Rust read-bandwidth test (rustc)
  bench ...             run both engines, alternating, one process per run; print the table

The weights are N(0, 0.02) (norm weights 1 + N(0, 0.02)), seeded, so nothing overflows and
two runs write the same checkpoint. Only speed and memory are measured: random weights
generate meaningless tokens, at the speed real weights of the same shapes would.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Qwen/Qwen3-1.7B config.json, as published.
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# QWEN3_SHAPE=0.6b: Qwen/Qwen3-0.6B's (and Qwen3-Embedding-0.6B's) dimensions instead.
if os.environ.get("QWEN3_SHAPE") == "0.6b":
    CONFIG.update({"hidden_size": 1024, "intermediate_size": 3072})
SEED = 1234

# ---------------------------------------------------------------------------------------------
# 1. The checkpoint


def tensor_shapes():
    c = CONFIG
    d, f, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    shapes["model.norm.weight"] = (d,)
    return shapes


def to_bf16(x):
    """float32 -> bfloat16 bits (uint16), round to nearest even (no NaNs here)."""
    import numpy as np

    bits = x.view(np.uint32)
    bits = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (bits >> np.uint32(16)).astype(np.uint16)


def write_safetensors(path, shapes, seed):
    """One safetensors file of BF16 tensors, written tensor by tensor (never all in memory)."""
    import numpy as np

    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as out:
        out.write(len(blob).to_bytes(8, "little"))
        out.write(blob)
        for name, shape in shapes.items():
            rows = shape[0] if len(shape) == 2 else 1
            cols = int(np.prod(shape)) // rows
            step = max(1, (1 << 24) // cols)  # about 16M values at a time
            for r in range(0, rows, step):
                n = min(step, rows - r) * cols
                x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
                if len(shape) == 1:
                    x += np.float32(1.0)
                out.write(to_bf16(x).tobytes())
    tmp.rename(path)


# Qwen3's added tokens, at Qwen's ids from 151643 on (its tokenizer_config.json's
# added_tokens_decoder): (content, special).
QWEN3_ADDED = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")] + [(t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>")]


def tokenizer_json():
    """A Qwen2/Qwen3-shaped byte-level BPE tokenizer laid out as Qwen3's.

    Built from the fixture's (engine/tests/fixtures/qwen/make_qwen3_gguf.py): the 256 byte
    symbols and its 253 learned merges, then filler tokens `fillerNNNNNN` (plain text, so every
    id decodes to something; no merge reaches them) up to 151643, then Qwen3's 26 added tokens
    at Qwen's ids 151643..151668 (<|endoftext|>, <|im_start|>, <|im_end|>, ..., <think>,
    </think>); as in Qwen's, the embedding's last rows (to vocab_size 151936) are padding, no
    token (the converter names them [PAD...]). The added tokens must follow the ordinary ones
    with no gap: transformers' loader gives an added token missing from the model's
    vocabulary the next free id, so tokens put after them would push them elsewhere (and the
    converter would write no <|im_start|>).
    tokenizer_config.json carries Qwen3's own chat template (the one Qwen3-0.6B and -1.7B ship,
    as llama.cpp keeps it in models/templates; copied into the fixtures' chat_template_cases.json),
    which the converter writes into the GGUF as tokenizer.chat_template: a server answers
    /v1/chat/completions on this model with the prompt a real Qwen3 would get (in this
    tokenizer's tokens: its 253 merges make English text about 1.6 characters a token).
    """
    sys.path.insert(0, str(REPO / "engine/tests/fixtures/qwen"))
    import make_qwen3_gguf as fx

    enc = fx.bytes_to_unicode()
    vocab = {}
    for ch in enc.values():
        vocab[ch] = len(vocab)
    merges = fx.learn_merges(fx.CORPUS, fx.N_MERGES)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    first_special = 151643
    while len(vocab) < first_special:
        vocab[f"filler{len(vocab):06d}"] = len(vocab)
    added = [{"id": first_special + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": special} for i, (tok, special) in enumerate(QWEN3_ADDED)]
    tokenizer, config = byte_level_bpe(vocab, merges, added, fx.QWEN2_PATTERN)
    config["model_max_length"] = 131072
    cases = json.loads((REPO / "engine/tests/fixtures/qwen/chat_template_cases.json").read_text(encoding="utf-8"))
    config["chat_template"] = cases["templates"]["qwen3"]["template"]
    n = len(vocab) + len(added)
    assert n == 151669 <= CONFIG["vocab_size"], n
    return tokenizer, config


def byte_level_bpe(vocab, merges, added, pattern):
    """tokenizer.json (a byte-level BPE with `pattern` as its pre-tokenizer split) and
    tokenizer_config.json as Qwen's tokenizers have them, for `vocab`, `merges` and the
    `added` tokens."""
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", **byte_level},
        ]},
        "post_processor": {"type": "ByteLevel", **byte_level},
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                   "single_word", "special")} for t in added},
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    return tokenizer, config


def cmd_checkpoint(args):
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # The small files are written every time (a checkpoint written by an older version of
    # this script gets today's tokenizer and chat template); the weights, seeded, only when
    # missing or written for another shape.
    same_shape = (out / "config.json").is_file() and json.loads((out / "config.json").read_text()) == CONFIG
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}) + "\n")
    tokenizer, tok_config = tokenizer_json()
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    if same_shape and (out / "model.safetensors").is_file():
        print(f"checkpoint: reusing {out}'s weights", file=sys.stderr)
        return
    write_safetensors(out / "model.safetensors", tensor_shapes(), SEED)
    size = (out / "model.safetensors").stat().st_size
    print(f"checkpoint: wrote {out} ({size / 1e9:.2f} GB BF16) in {time.time() - start:.0f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# 2. llama.cpp's converter and quantizer


def cmd_convert(args):
    convert(args.dir, args.out, args.converter_dir)


def convert(model_dir, out, converter_dir, pre="qwen2", extra_args=()):
    """convert_hf_to_gguf.py, unmodified but for the pre-tokenizer hash (as make_qwen3_gguf.py):
    a hash missing from its table gives `pre`; `extra_args` go to the converter (e.g. --no-mtp)."""
    import runpy

    converter_dir = Path(converter_dir).resolve()
    converter = converter_dir / "convert_hf_to_gguf.py"
    sys.path.insert(0, str(converter_dir))
    sys.path.insert(1, str(converter_dir / "gguf-py"))
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tok):
        try:
            return original(self, tok)
        except NotImplementedError:
            print(f"convert: pre-tokenizer hash not in the converter's table -> {pre!r}", file=sys.stderr)
            return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    out = Path(out)
    tmp = out.with_suffix(".partial")
    sys.argv = [str(converter), str(Path(model_dir).resolve()), "--outtype", "bf16", "--outfile", str(tmp),
                *extra_args]
    runpy.run_path(str(converter), run_name="__main__")
    tmp.rename(out)


# llama_ftype values (llama.h): LLAMA_FTYPE_MOSTLY_Q6_K = 18, LLAMA_FTYPE_MOSTLY_Q4_K_S = 14.
# With `pure`, every 2-D weight (token_embd included) takes the ftype's base type, Q6_K or
# Q4_K, instead of llama.cpp's mixes (Q4_K_S/M put token_embd in Q6_K and some attn_v /
# ffn_down in Q5_K/Q6_K): the same types our quantize-at-load writes.
FTYPES = {"q8_0": 7, "q6_k": 18, "q4_k": 14}


def cmd_quantize(args):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[args.type]
    params.nthread = args.threads
    params.pure = True
    tmp = args.out + ".partial"
    rc = llama_cpp.llama_model_quantize(args.src.encode(), tmp.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize failed: {rc}")
    os.rename(tmp, args.out)


def weight_bytes(gguf_path):
    """Bytes of weights a decode step reads, and the tensor types: every tensor of the file
    (token_embd once: tied, it is the output projection, read whole; its lookup row is noise)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    types, total = {}, 0
    for t in reader.tensors:
        total += int(t.n_bytes)
        if len(t.shape) > 1:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return total, types


# ---------------------------------------------------------------------------------------------
# 4. Memory bandwidth

BANDWIDTH_RS = r"""
use std::time::Instant;
// Sums a buffer with THREADS threads, each its own contiguous share, 8 independent lanes so
// the loop vectorizes; best of PASSES passes. Reports bytes read per second.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args[1].parse().unwrap();
    let threads: usize = args[2].parse().unwrap();
    let passes: usize = args[3].parse().unwrap();
    let n = mib * (1 << 20) / 8;
    // Written, not calloc'ed: zero pages would all map to one physical page and hit the cache.
    let buf: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    let chunk = n / threads;
    let mut best = f64::MAX;
    let mut check = 0u64;
    for _ in 0..passes {
        let start = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf.chunks(chunk).map(|part| s.spawn(move || {
                let mut acc = [0u64; 8];
                for c in part.chunks_exact(8) {
                    for j in 0..8 { acc[j] = acc[j].wrapping_add(c[j]); }
                }
                acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let dt = start.elapsed().as_secs_f64();
        check ^= sums.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        if dt < best { best = dt; }
    }
    let bytes = (chunk * threads * 8) as f64;
    println!("{{\"threads\":{},\"bytes\":{},\"best_s\":{},\"gb_per_s\":{},\"check\":{}}}",
             threads, bytes, best, bytes / best / 1e9, check % 1000);
}
"""


def cmd_bandwidth(args):
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, exe = work / "bandwidth.rs", work / "bandwidth"
    if not exe.is_file() or not src.is_file() or src.read_text() != BANDWIDTH_RS:
        src.write_text(BANDWIDTH_RS)
        subprocess.run(["rustc", "-C", "opt-level=3", "-C", "target-cpu=native", "-o", str(exe), str(src)], check=True)
    for threads in (1, args.threads):
        out = subprocess.run([str(exe), str(args.mib), str(threads), str(args.passes)], check=True,
                             capture_output=True, text=True).stdout
        print(out.strip())


def measure_bandwidth(exe, mib, threads, passes):
    out = subprocess.run([str(exe), str(mib), str(threads), str(passes)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)["gb_per_s"]


# ---------------------------------------------------------------------------------------------
# 3, 5. The runs and the table

LLAMA_CPP_RUN = textwrap.dedent(
    """
    import json, sys, time
    import llama_cpp
    model, threads, ids, decode = sys.argv[1], int(sys.argv[2]), [int(t) for t in sys.argv[3].split(",")], int(sys.argv[4])
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads,
                          n_ctx=len(ids) + decode + 16, n_batch=512, verbose=False)
    start = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - start
    generated = 0
    start = time.perf_counter()
    for _ in range(decode):
        token = llm.sample(temp=0.0)
        llm.eval([token])
        generated += 1
    decode_s = time.perf_counter() - start
    print(json.dumps({"prompt_tokens": len(ids), "prefill_tokens_per_s": len(ids) / prefill,
                      "decode_tokens_per_s": generated / decode_s}))
    """
)


def run_once(argv):
    """Runs one measurement process; returns its JSON report and its own peak RSS in MiB
    (ru_maxrss from wait4: that process alone)."""
    import threading

    start = time.time()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.append(child.stderr.read()))
    reader.start()
    stdout = child.stdout.read()
    reader.join()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{argv[0]} failed ({code}):\n{err[0][-4000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["wall_s"] = time.time() - start
    return report, usage.ru_maxrss / 1024


def summary(runs):
    results = [r for r, _ in runs]
    return {
        "prefill": statistics.median(r["prefill_tokens_per_s"] for r in results),
        "decode": statistics.median(r["decode_tokens_per_s"] for r in results),
        "rss_mib": statistics.median(rss for _, rss in runs),
        "wall_s": statistics.median(r["wall_s"] for r in results),
    }


def cmd_bench(args):
    import random

    rng = random.Random(SEED)
    # Token ids of ordinary tokens (the byte symbols and merges: 0..508), fixed by the seed.
    ids = [rng.randrange(0, 509) for _ in range(args.prompt_tokens)]
    id_arg = ",".join(map(str, ids))
    sides = {}
    for quant in args.quants:
        gguf = str(Path(args.workdir) / f"qwen3-1.7b-random-{quant}.gguf")
        sides[quant] = {
            "switchyard": [args.switchyard, "generate", "--model", args.checkpoint, "--quant", quant,
                           "--prompt-ids", id_arg, "--max-tokens", str(args.decode_tokens), "--temperature", "0",
                           "--ignore-eos", "--threads", str(args.threads), "--json"],
            "llama.cpp": [sys.executable, "-c", LLAMA_CPP_RUN, gguf, str(args.threads), id_arg,
                          str(args.decode_tokens)],
        }
        if args.ours_on_gguf:
            sides[quant]["sy on gguf"] = [args.switchyard, "generate", "--model", gguf, "--prompt-ids", id_arg,
                                          "--max-tokens", str(args.decode_tokens), "--temperature", "0",
                                          "--ignore-eos", "--threads", str(args.threads), "--json"]
    runs = {q: {name: [] for name in s} for q, s in sides.items()}
    bw_exe = Path(args.workdir) / "bandwidth"
    bandwidth = []
    # Alternate everything (bandwidth, then each quant's sides) round by round, so a change
    # in machine load hits all alike.
    for r in range(args.runs):
        bandwidth.append(measure_bandwidth(bw_exe, args.bw_mib, args.threads, 5))
        print(f"round {r + 1}: bandwidth {bandwidth[-1]:.2f} GB/s", file=sys.stderr)
        for quant, s in sides.items():
            for name, argv in s.items():
                report, rss = run_once(argv)
                runs[quant][name].append((report, rss))
                print(f"round {r + 1}: {quant} {name:11} prefill {report['prefill_tokens_per_s']:7.2f} "
                      f"decode {report['decode_tokens_per_s']:6.2f} tok/s, peak RSS {rss:7.1f} MiB, "
                      f"wall {report['wall_s']:5.1f} s", file=sys.stderr)
    bw = statistics.median(bandwidth)

    print(f"\nQwen3-1.7B shapes, random weights; {args.threads} threads; prompt {args.prompt_tokens} ids, "
          f"{args.decode_tokens} greedy tokens; median of {args.runs} rounds")
    print(f"read bandwidth, {args.threads} threads, {args.bw_mib} MiB buffer: {bw:.2f} GB/s "
          f"(rounds: {', '.join(f'{b:.2f}' for b in bandwidth)})")
    result = {"bandwidth_gb_per_s": bw, "bandwidth_rounds": bandwidth, "quants": {}}
    for quant, s in sides.items():
        gguf = str(Path(args.workdir) / f"qwen3-1.7b-random-{quant}.gguf")
        nbytes, types = weight_bytes(gguf)
        ceiling = bw * 1e9 / nbytes
        print(f"\n{quant}: weights read per token {nbytes / 1e9:.3f} GB (llama.cpp file's tensors: "
              f"{', '.join(f'{n} {t}' for t, n in sorted(types.items()))}); bandwidth ceiling {ceiling:.2f} tok/s")
        print(f"{'':14}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MiB':>14}{'decode/ceiling':>16}"
              f"{'wall s':>8}")
        figures = {name: summary(r) for name, r in runs[quant].items()}
        for name, f in figures.items():
            print(f"{name:14}{f['prefill']:15.2f}{f['decode']:14.2f}{f['rss_mib']:14.1f}"
                  f"{100 * f['decode'] / ceiling:15.1f}%{f['wall_s']:8.1f}")
        ours, theirs = figures["switchyard"], figures["llama.cpp"]
        print(f"{'vs llama.cpp':14}{ours['prefill'] / theirs['prefill']:14.2f}x{ours['decode'] / theirs['decode']:13.2f}x"
              f"{ours['rss_mib'] / theirs['rss_mib']:13.2f}x")
        if "sy on gguf" in figures:
            g = figures["sy on gguf"]
            print(f"{'gguf/llama':14}{g['prefill'] / theirs['prefill']:14.2f}x{g['decode'] / theirs['decode']:13.2f}x"
                  f"{g['rss_mib'] / theirs['rss_mib']:13.2f}x")
        result["quants"][quant] = {"weight_bytes": nbytes, "ceiling_tok_s": ceiling, "figures": figures,
                                   "rounds": {n: [dict(rep, rss_mib=rss) for rep, rss in r]
                                              for n, r in runs[quant].items()}}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")


def add_shared_commands(sub):
    """The subcommands both benchmarks against llama.cpp take: convert, quantize, bandwidth."""
    p = sub.add_parser("convert")
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--converter-dir", required=True)
    p = sub.add_parser("quantize")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("type", choices=sorted(FTYPES))
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("bandwidth")
    p.add_argument("workdir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--passes", type=int, default=5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("checkpoint")
    p.add_argument("dir")
    add_shared_commands(sub)
    p = sub.add_parser("bench")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--switchyard", required=True)
    p.add_argument("--quants", nargs="+", default=["q6_k", "q4_k"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--bw-mib", type=int, default=1024)
    p.add_argument("--ours-on-gguf", action="store_true",
                   help="also run Switchyard on llama.cpp's quantized GGUF (same blocks, no quantizing at load)")
    p.add_argument("--json-out")
    args = ap.parse_args()
    {"checkpoint": cmd_checkpoint, "convert": cmd_convert, "quantize": cmd_quantize, "bandwidth": cmd_bandwidth,
     "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
