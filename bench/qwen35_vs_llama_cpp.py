"""Qwen3.5-2B-shaped random checkpoint: Switchyard's engine against llama.cpp (prefill, decode,
peak RSS, the memory-bandwidth ceiling, and the time to first token of a conversation's second
turn). Driven by bench/qwen35_vs_llama_cpp.sh; each step is a subcommand so each runs in the
Python environment it needs. The helpers shared with the Qwen3-1.7B benchmark (bandwidth test,
llama.cpp's converter and quantizer, one measured process, medians, GGUF weight bytes) are
imported from bench/qwen3_vs_llama_cpp.py.

  checkpoint DIR        write a random Qwen3.5-2B text model as a Hugging Face directory
                        (BF16 safetensors, sharded above --shard-mb, config.json, tokenizer.json);
                        numpy (the converter's venv)
  mlx HF_DIR OUT_DIR    the same weights as mlx-lm converts them: affine 6-bit, groups of 64
                        (numpy; the converter's venv, whose torch the fixture's quantizer imports)
  convert DIR OUT.gguf  llama.cpp's own convert_hf_to_gguf.py --outtype bf16 --no-mtp (converter venv)
  quantize IN OUT TYPE  llama.cpp's llama_model_quantize, TYPE q6_k or q4_k, pure (llama.cpp venv)
  bandwidth WORKDIR     compile and run the small Rust read-bandwidth test (rustc)
  bench ...             prefill / decode / peak RSS, both engines alternating, one process per run
  turn-two ...          time to first token of a conversation's second turn

Dimensions are Qwen/Qwen3.5-2B's text model as published. QWEN35_TINY=1 shrinks them for a
smoke test (hidden 256, 4 layers, intermediate 512, vocab 8192, 2 query / 1 KV heads, 2 + 2
DeltaNet heads, head sizes kept); QWEN35_LAYERS, QWEN35_HIDDEN, QWEN35_INTERMEDIATE and
QWEN35_VOCAB override single values (layers: a multiple of 4).

Weights are N(0, 0.02), seeded, BF16 (A_log float32, as published). Qwen3.5's RMSNorm weights are
zero-centred (the model multiplies by 1 + w), so those are N(0, 0.02) too; the DeltaNet output
norm (linear_attn.norm) is not, and is 1 + N(0, 0.02). No multi-token-prediction layers (the
converter runs with --no-mtp; the config has no mtp_num_hidden_layers). Only speed and memory are
measured: random weights generate meaningless tokens, at the speed real weights of the same
shapes would.

The tokenizer is a byte-level BPE with Qwen3.5's pre-tokenizer regex and chat template (thinking
on by default, as published) and Qwen3.5's added tokens from id vocab_size - 276 on (<|endoftext|>
248044, <|im_start|> 248045, <|im_end|> 248046, ..., <think> 248068, </think> 248069); the ids
after them are the embedding's padding, as in Qwen's own. Its ordinary tokens are the 256 byte
symbols and then words, a space and 1 to 4 lowercase letters (" a" .. " z", " aa" .. " zz", ...),
each made by one merge from the word one letter shorter, so that a random model's answer (mostly
such words) reads back as the ids it generated.
"""

import argparse
import http.client
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ beside the fixtures' scripts imported below
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import qwen3_vs_llama_cpp as base  # noqa: E402

REPO = base.REPO
FIXTURES = REPO / "engine/tests/fixtures/qwen"
SEED = 1235
TINY = os.environ.get("QWEN35_TINY", "0") == "1"
NAME = "qwen3.5-tiny" if TINY else "qwen3.5-2b"

# Qwen3.5's added tokens, from id 248044 (vocab_size - 276) on: (content, special).
ADDED = [(t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                             "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                             "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")]
ADDED += [(t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                               "<think>", "</think>")]
ADDED_FROM_END = 276  # 248320 - 248044


def env_int(name, default):
    return int(os.environ.get(name, default))


def make_config():
    """Qwen/Qwen3.5-2B's text_config (Qwen3_5ForCausalLM, model_type qwen3_5_text), or the tiny one."""
    if TINY:
        dims = dict(layers=4, hidden=256, intermediate=512, vocab=8192, heads=2, kv_heads=1, lin_heads=2)
    else:
        dims = dict(layers=24, hidden=2048, intermediate=6144, vocab=248320, heads=8, kv_heads=2, lin_heads=16)
    layers = env_int("QWEN35_LAYERS", dims["layers"])
    assert layers % 4 == 0, "QWEN35_LAYERS: a multiple of 4 (three DeltaNet layers, then one full-attention)"
    vocab = env_int("QWEN35_VOCAB", dims["vocab"])
    first_special = vocab - ADDED_FROM_END
    return {
        "architectures": ["Qwen3_5ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "bos_token_id": None,
        "dtype": "bfloat16",
        "eos_token_id": first_special,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": env_int("QWEN35_HIDDEN", dims["hidden"]),
        "initializer_range": 0.02,
        "intermediate_size": env_int("QWEN35_INTERMEDIATE", dims["intermediate"]),
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * (layers // 4),
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": dims["lin_heads"],
        "linear_num_value_heads": dims["lin_heads"],
        "linear_value_head_dim": 128,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 262144,
        "model_type": "qwen3_5_text",
        "num_attention_heads": dims["heads"],
        "num_hidden_layers": layers,
        "num_key_value_heads": dims["kv_heads"],
        "pad_token_id": None,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "tie_word_embeddings": True,
        "transformers_version": "4.57.0.dev0",
        "use_cache": True,
        "vocab_size": vocab,
    }


CONFIG = make_config()
FIRST_SPECIAL = CONFIG["vocab_size"] - ADDED_FROM_END
IM_END = FIRST_SPECIAL + 2
STOP_IDS = [FIRST_SPECIAL, IM_END]  # <|endoftext|>, <|im_end|>

# ---------------------------------------------------------------------------------------------
# 1. The checkpoint


def tensor_specs(c):
    """(name, shape, dtype, init) in writing order; init "w": N(0, 0.02), "norm0": zero-centred
    norm N(0, 0.02), "norm1": 1 + N(0, 0.02)."""
    d, f, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    hk, hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv, k = c["linear_key_head_dim"], c["linear_value_head_dim"], c["linear_conv_kernel_dim"]
    conv = 2 * hk * dk + hv * dv
    specs = [("model.embed_tokens.weight", (c["vocab_size"], d), "BF16", "w")]
    for i, kind in enumerate(c["layer_types"]):
        p = f"model.layers.{i}."
        specs.append((p + "input_layernorm.weight", (d,), "BF16", "norm0"))
        if kind == "linear_attention":
            a = p + "linear_attn."
            specs += [
                (a + "A_log", (hv,), "F32", "w"),
                (a + "conv1d.weight", (conv, 1, k), "BF16", "w"),
                (a + "dt_bias", (hv,), "BF16", "w"),
                (a + "in_proj_a.weight", (hv, d), "BF16", "w"),
                (a + "in_proj_b.weight", (hv, d), "BF16", "w"),
                (a + "in_proj_qkv.weight", (conv, d), "BF16", "w"),
                (a + "in_proj_z.weight", (hv * dv, d), "BF16", "w"),
                (a + "norm.weight", (dv,), "BF16", "norm1"),
                (a + "out_proj.weight", (d, hv * dv), "BF16", "w"),
            ]
        else:
            a = p + "self_attn."
            specs += [
                (a + "k_norm.weight", (hd,), "BF16", "norm0"),
                (a + "k_proj.weight", (nkv * hd, d), "BF16", "w"),
                (a + "o_proj.weight", (d, nh * hd), "BF16", "w"),
                (a + "q_norm.weight", (hd,), "BF16", "norm0"),
                (a + "q_proj.weight", (2 * nh * hd, d), "BF16", "w"),  # queries and their output gate
                (a + "v_proj.weight", (nkv * hd, d), "BF16", "w"),
            ]
        specs += [
            (p + "mlp.down_proj.weight", (d, f), "BF16", "w"),
            (p + "mlp.gate_proj.weight", (f, d), "BF16", "w"),
            (p + "mlp.up_proj.weight", (f, d), "BF16", "w"),
            (p + "post_attention_layernorm.weight", (d,), "BF16", "norm0"),
        ]
    specs.append(("model.norm.weight", (d,), "BF16", "norm0"))
    return specs


DTYPE_BYTES = {"BF16": 2, "F32": 4, "U32": 4}


def nbytes(dtype, shape):
    n = DTYPE_BYTES[dtype]
    for s in shape:
        n *= s
    return n


def write_safetensors(path, entries, metadata):
    """One safetensors file written tensor by tensor, never whole in memory: entries are
    (name, dtype, shape, chunks), chunks() yielding numpy arrays whose bytes, in order, are the
    tensor's."""
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        n = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as out:
        out.write(len(blob).to_bytes(8, "little"))
        out.write(blob)
        for name, dtype, shape, chunks in entries:
            written = 0
            for part in chunks():
                data = part.tobytes()
                out.write(data)
                written += len(data)
            assert written == nbytes(dtype, shape), (name, written)
    tmp.rename(path)


def random_chunks(rng, shape, dtype, init):
    import numpy as np

    def chunks():
        rows = shape[0] if len(shape) > 1 else 1
        cols = int(np.prod(shape)) // rows
        step = max(1, (1 << 24) // cols)  # about 16M values at a time
        for r in range(0, rows, step):
            x = rng.standard_normal(min(step, rows - r) * cols, dtype=np.float32) * np.float32(0.02)
            if init == "norm1":
                x += np.float32(1.0)
            yield x if dtype == "F32" else base.to_bf16(x)

    return chunks


def word_tokens(n):
    """The first n words, shortest first: "a" .. "z", "aa" .. "zz", "aaa" .. (each with its
    one-letter-shorter prefix before it)."""
    out = []
    for length in itertools.count(1):
        for letters in itertools.product("abcdefghijklmnopqrstuvwxyz", repeat=length):
            if len(out) == n:
                return out
            out.append("".join(letters))


def tokenizer_files(vocab_size):
    """tokenizer.json and tokenizer_config.json (see the module's docstring)."""
    sys.path.insert(0, str(FIXTURES))
    import make_qwen3_gguf as fx
    import make_qwen35_gguf as fx35

    space = fx.bytes_to_unicode()[ord(" ")]
    first_special = vocab_size - ADDED_FROM_END
    vocab = {ch: i for i, ch in enumerate(fx.bytes_to_unicode().values())}
    merges = []
    for word in word_tokens(first_special - len(vocab)):
        vocab[space + word] = len(vocab)
        merges.append((space + word[:-1], word[-1]))
    # As Qwen's: the added tokens follow the ordinary ones, and the ids after them are the
    # embedding's padding (no token; the converter names them [PAD...]).
    added = [{"id": first_special + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": special} for i, (tok, special) in enumerate(ADDED)]
    assert len(vocab) == first_special and first_special + len(added) <= vocab_size
    tokenizer, config = base.byte_level_bpe(vocab, merges, added, fx35.QWEN35_PATTERN)
    cases = json.loads((FIXTURES / "chat_template_cases.json").read_text(encoding="utf-8"))
    config["chat_template"] = cases["templates"]["qwen3_5"]["template"]
    config["model_max_length"] = 262144
    return tokenizer, config


def weight_files(directory):
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return ["model.safetensors"]


def complete(directory, config):
    """A directory this script wrote for `config` (config.json is written last)."""
    cfg = directory / "config.json"
    if not cfg.is_file():
        return False
    written = json.loads(cfg.read_text())
    written.pop("quantization", None)
    written.pop("quantization_config", None)
    return written == config and all((directory / f).is_file() for f in weight_files(directory))


def cmd_checkpoint(args):
    out = Path(args.dir)
    if complete(out, CONFIG) and (out / "tokenizer.json").is_file():
        print(f"checkpoint: reusing {out}", file=sys.stderr)
        return
    import numpy as np

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.time()
    tokenizer, tok_config = tokenizer_files(CONFIG["vocab_size"])
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": FIRST_SPECIAL, "eos_token_id": [IM_END, FIRST_SPECIAL], "pad_token_id": FIRST_SPECIAL}) + "\n")
    rng = np.random.default_rng(SEED)
    entries = [(name, dtype, shape, random_chunks(rng, shape, dtype, init))
               for name, shape, dtype, init in tensor_specs(CONFIG)]
    # Shards of at most --shard-mb (as save_pretrained's max_shard_size), in order.
    shards, size = [[]], 0
    for e in entries:
        n = nbytes(e[1], e[2])
        if shards[-1] and size + n > args.shard_mb << 20:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += n
    total = sum(nbytes(e[1], e[2]) for e in entries)
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0], {"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / name, shard, {"format": "pt"})
            weight_map.update({e[0]: name for e in shard})
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    print(f"checkpoint: wrote {out} ({total / 1e9:.2f} GB BF16, {len(shards)} file(s)) in "
          f"{time.time() - start:.0f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# 2. The MLX directory


def read_safetensors(directory):
    """name -> (memory-mapped array of the stored dtype (BF16 as uint16), dtype) for every tensor."""
    import numpy as np

    tensors = {}
    for file in weight_files(directory):
        path = directory / file
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = {"BF16": np.uint16, "F32": np.float32}[info["dtype"]]
            start, end = info["data_offsets"]
            tensors[name] = (np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start,
                                       shape=tuple(info["shape"])), info["dtype"])
    return tensors


def bf16_to_f32(bits):
    import numpy as np

    return (np.asarray(bits).astype(np.uint32) << np.uint32(16)).view(np.float32)


def cmd_mlx(args):
    """mlx-lm's conversion of the checkpoint (see engine/tests/fixtures/qwen/make_qwen35_mlx.py,
    whose quantizer and packer are used here): a text-only checkpoint keeps its `model.*` names;
    conv1d [C, 1, K] becomes [C, K, 1]; 1 is added (in bfloat16) to the zero-centred norms;
    every matrix whose input size divides by 64 (the embedding too) becomes 6-bit codes packed
    into uint32 with bfloat16 scales and biases per group of 64; A_log stays float32. Matrices
    are quantized in row chunks (the 2B embedding is 248320 x 2048)."""
    import numpy as np

    sys.path.insert(0, str(FIXTURES))
    import make_qwen35_mlx as mq

    src, out = Path(args.hf_dir), Path(args.out_dir)
    config = json.loads((src / "config.json").read_text())
    if complete(out, config):
        print(f"mlx: reusing {out}", file=sys.stderr)
        return
    start = time.time()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tensors = read_safetensors(src)
    stash = {}
    entries = []
    checked = 0
    for name in sorted(tensors):
        raw, dtype = tensors[name]
        if name.endswith("A_log"):
            entries.append((name, "F32", raw.shape, lambda raw=raw: [np.asarray(raw, dtype=np.float32)]))
        elif name.endswith("conv1d.weight"):
            c, one, k = raw.shape
            entries.append((name, "BF16", (c, k, one), lambda raw=raw: [np.asarray(raw)]))  # same bytes
        elif name.endswith(mq.NORMS) or name.endswith("model.norm.weight"):
            entries.append((name, "BF16", raw.shape,
                            lambda raw=raw: [base.to_bf16(bf16_to_f32(raw) + np.float32(1.0))]))
        elif raw.ndim == 2 and raw.shape[1] % mq.GROUP == 0 and not name.endswith("norm.weight"):
            rows, cols = raw.shape
            stem = name[: -len(".weight")]

            def codes(raw=raw, stem=stem):
                scales, biases = [], []
                step = max(1, (1 << 22) // raw.shape[1])
                for r in range(0, raw.shape[0], step):
                    w = bf16_to_f32(raw[r:r + step])
                    q, s, b = mq.affine_quantize(w)
                    scales.append(base.to_bf16(s))
                    biases.append(base.to_bf16(b))
                    yield mq.pack(q)
                stash[stem] = (np.concatenate(scales), np.concatenate(biases))

            groups = (rows, cols // mq.GROUP)
            entries += [
                (stem + ".weight", "U32", (rows, cols * mq.BITS // 32), codes),
                (stem + ".scales", "BF16", groups, lambda stem=stem: [stash[stem][0]]),
                (stem + ".biases", "BF16", groups, lambda stem=stem: [stash.pop(stem)[1]]),
            ]
            if args.check_mlx:
                import mlx.core as mx

                w = bf16_to_f32(raw[:256])
                q, s, b = mq.affine_quantize(w)
                wq, ms, mb = mx.quantize(mx.array(w).astype(mx.bfloat16), group_size=mq.GROUP, bits=mq.BITS)
                assert np.array_equal(np.array(wq), mq.pack(q)), f"{name}: codes differ from mx.quantize"
                assert np.array_equal(np.array(ms.astype(mx.float32)), bf16_to_f32(base.to_bf16(s))), name
                assert np.array_equal(np.array(mb.astype(mx.float32)), bf16_to_f32(base.to_bf16(b))), name
                checked += 1
        else:
            entries.append((name, dtype, raw.shape, lambda raw=raw: [np.asarray(raw)]))
    write_safetensors(out / "model.safetensors", entries, {"format": "mlx"})
    for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(src / file, out / file)
    config["quantization"] = {"group_size": mq.GROUP, "bits": mq.BITS, "mode": "affine"}
    config["quantization_config"] = config["quantization"]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    size = (out / "model.safetensors").stat().st_size
    print(f"mlx: wrote {out} ({size / 1e9:.2f} GB, {sum(e[0].endswith('.scales') for e in entries)} matrices "
          f"quantized{f', {checked} checked against mx.quantize' if args.check_mlx else ''}) in "
          f"{time.time() - start:.0f} s", file=sys.stderr)


def safetensors_bytes(directory):
    """Bytes of the tensors of a safetensors directory (headers excluded)."""
    total = 0
    for file in weight_files(directory):
        path = directory / file
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        total += path.stat().st_size - 8 - n
    return total


# ---------------------------------------------------------------------------------------------
# 3. llama.cpp's converter and quantizer


def cmd_convert(args):
    # The pre-tokenizer hash is not in the converter's table: "qwen35" (Qwen3.5's regex, used
    # here), as make_qwen35_gguf.py does; no MTP layers.
    base.convert(args.dir, args.out, args.converter_dir, pre="qwen35", extra_args=("--no-mtp",))


# ---------------------------------------------------------------------------------------------
# 4. Prefill, decode, peak RSS


def gguf_path(workdir, quant):
    return Path(workdir) / f"{NAME}-random-{quant}.gguf"


def generate_argv(args, model, quant, id_arg):
    argv = [args.switchyard, "generate", "--model", str(model)]
    if quant:
        argv += ["--quant", quant]
    return argv + ["--prompt-ids", id_arg, "--max-tokens", str(args.decode_tokens), "--temperature", "0",
                   "--ignore-eos", "--threads", str(args.threads), "--json"]


def cmd_bench(args):
    import random

    rng = random.Random(SEED)
    # Ordinary token ids (byte symbols and words), fixed by the seed.
    ids = [rng.randrange(0, FIRST_SPECIAL) for _ in range(args.prompt_tokens)]
    id_arg = ",".join(map(str, ids))
    sides = {}
    for quant in ("q6_k", "q4_k"):
        gguf = gguf_path(args.workdir, quant)
        sides[quant] = {
            "switchyard": generate_argv(args, args.checkpoint, quant, id_arg),
            "llama.cpp": [sys.executable, "-c", base.LLAMA_CPP_RUN, str(gguf), str(args.threads), id_arg,
                          str(args.decode_tokens)],
        }
        if args.ours_on_gguf:
            sides[quant]["sy on gguf"] = generate_argv(args, gguf, None, id_arg)
    sides["mlx6"] = {"switchyard": generate_argv(args, args.mlx, None, id_arg)}
    runs = {f: {name: [] for name in s} for f, s in sides.items()}
    bw_exe = Path(args.workdir) / "bandwidth"
    bandwidth = []
    for r in range(args.runs):
        bandwidth.append(base.measure_bandwidth(bw_exe, args.bw_mib, args.threads, 5))
        print(f"round {r + 1}: bandwidth {bandwidth[-1]:.2f} GB/s", file=sys.stderr)
        for fmt, s in sides.items():
            for name, argv in s.items():
                report, rss = base.run_once(argv)
                runs[fmt][name].append((report, rss))
                print(f"round {r + 1}: {fmt} {name:11} prefill {report['prefill_tokens_per_s']:7.2f} "
                      f"decode {report['decode_tokens_per_s']:6.2f} tok/s, peak RSS {rss:7.1f} MiB, "
                      f"wall {report['wall_s']:5.1f} s", file=sys.stderr)
    bw = statistics.median(bandwidth)
    figures = {fmt: {name: base.summary(r) for name, r in rn.items()} for fmt, rn in runs.items()}
    weights = {q: base.weight_bytes(str(gguf_path(args.workdir, q))) for q in ("q6_k", "q4_k")}
    mlx_bytes = safetensors_bytes(Path(args.mlx))

    shape = "tiny (QWEN35_TINY)" if TINY else "Qwen3.5-2B"
    print(f"\n{shape} shapes, random weights; {args.threads} threads; prompt {args.prompt_tokens} ids, "
          f"{args.decode_tokens} greedy tokens; median of {args.runs} rounds")
    print(f"read bandwidth, {args.threads} threads, {args.bw_mib} MiB buffer: {bw:.2f} GB/s "
          f"(rounds: {', '.join(f'{b:.2f}' for b in bandwidth)})")
    result = {"bandwidth_gb_per_s": bw, "bandwidth_rounds": bandwidth, "formats": {}}
    for fmt in sides:
        rows = []  # (label, figures, bytes read per token)
        if fmt == "mlx6":
            print(f"\nmlx6: ours on the MLX directory ({mlx_bytes / 1e9:.3f} GB of tensors: 6-bit codes, bf16 "
                  f"scales and biases per 64); llama.cpp cannot read MLX, its row is its Q6_K")
            rows.append(("switchyard", figures[fmt]["switchyard"], mlx_bytes))
            rows.append(("llama.cpp q6_k", figures["q6_k"]["llama.cpp"], weights["q6_k"][0]))
        else:
            nb, types = weights[fmt]
            print(f"\n{fmt}: weights read per token {nb / 1e9:.3f} GB (llama.cpp file's tensors: "
                  f"{', '.join(f'{n} {t}' for t, n in sorted(types.items()))}); bandwidth ceiling "
                  f"{bw * 1e9 / nb:.2f} tok/s")
            rows += [(name, f, nb) for name, f in figures[fmt].items()]
        print(f"{'':16}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MiB':>14}{'GB/token':>10}"
              f"{'ceiling':>9}{'decode/ceiling':>16}{'wall s':>8}")
        for label, f, nb in rows:
            ceiling = bw * 1e9 / nb
            print(f"{label:16}{f['prefill']:15.2f}{f['decode']:14.2f}{f['rss_mib']:14.1f}{nb / 1e9:10.3f}"
                  f"{ceiling:9.2f}{100 * f['decode'] / ceiling:15.1f}%{f['wall_s']:8.1f}")
        theirs = rows[-1][1] if fmt == "mlx6" else figures[fmt]["llama.cpp"]
        for label, f, _ in rows:
            if f is theirs:
                continue
            tag = "vs llama.cpp" if label == "switchyard" else f"{label}/llama"
            print(f"{tag:16}{f['prefill'] / theirs['prefill']:14.2f}x{f['decode'] / theirs['decode']:13.2f}x"
                  f"{f['rss_mib'] / theirs['rss_mib']:13.2f}x")
        result["formats"][fmt] = {
            "weight_bytes": {label: nb for label, _, nb in rows},
            "figures": {label: f for label, f, _ in rows},
            "rounds": {n: [dict(rep, rss_mib=rss) for rep, rss in r] for n, r in runs[fmt].items()},
        }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# 5. Time to first token of turn two
#
# A conversation, thinking off (chat_template_kwargs.enable_thinking = false, what the daemon
# itself sets for the plain local tier): turn one is a user message of about --prompt-tokens
# tokens (templated), answered with --answer-tokens greedy tokens; turn two sends turn one, that
# answer as the assistant message, and a new user message of about --new-tokens tokens.
# Qwen3.5's chat template renders turn one's prompt as `...<|im_start|>assistant\n<think>\n\n
# </think>\n\n` but an earlier turn's answer as `<|im_start|>assistant\n{answer}<|im_end|>`
# (the think block dropped, the answer trimmed), so turn two's tokens part from what the engine
# evaluated right after turn one's `<|im_start|>assistant\n`: the next turn never continues the
# tokens exactly. (With thinking on the same happens: the reasoning is dropped.)
#
#   switchyard chat  the daemon (`switchyard serve`, as bench/turn_two.sh), its OpenAI chat API,
#                    streamed. Its engine keeps each request's state for the conversation's next
#                    turn; the DeltaNet state cannot be cut back, so it is snapshotted at the
#                    prompt's last turn boundary (after turn one's user message), and turn two
#                    starts from there. Reused tokens: usage.prompt_tokens_details.cached_tokens.
#   switchyard cold  the same kind of turn two, of a conversation whose turn one was never sent:
#                    everything runs (what turn two costs without the state).
#   llama.cpp chat   llama-cpp-python's Llama in one process: its own turn one, then turn two with
#                    the same messages as ours (our answer as the assistant message), the same
#                    template rendered with jinja2, tokenized by llama.cpp (the same token ids as
#                    ours: the table shows both counts). Llama.generate reuses the longest common
#                    prefix of the tokens it evaluated when the memory can be cut back to it
#                    (llama_memory_seq_rm); a recurrent state cannot be (its rollback is off by
#                    default), and then it evaluates the whole prompt again.
#   llama.cpp ids    turn two as exact token ids: turn one's ids, the generated ids, then the
#                    template's tokens for the new user message: the best case for its prefix
#                    reuse, which a chat client of Qwen3.5 never sends.
# The tokens llama.cpp evaluated are counted by wrapping Llama.eval. TTFT: from sending turn two
# (ours: the HTTP request; llama.cpp: the generate call, the prompt already tokenized) to its
# first token. Every conversation is new: nothing but its own turn one to reuse.

WORDS = ("the river runs past old mills and quiet fields toward the sea where boats wait for a calm "
         "day and the gulls cry over the harbour wall at dusk ").split()
TEMPLATE_KWARGS = {"enable_thinking": False}


def sized_text(tokenize, head, target, wrap):
    """`head` and words until `wrap(text)` is `target` tokens or more."""
    words = [head]
    while len(tokenize(wrap(" ".join(words)))) < target:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


LLAMA_CPP_TURNS = textwrap.dedent(
    """
    import json, sys, time
    import llama_cpp
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    model, threads, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=spec["n_ctx"],
                          n_batch=512, verbose=False)
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(spec["template"])

    def render(messages):
        return template.render(messages=messages, add_generation_prompt=True, **spec["kwargs"])

    def tokenize(text):
        return llm.tokenize(text.encode(), add_bos=False, special=True)

    evaluated = []
    plain_eval = llm.eval

    def counting_eval(tokens):
        evaluated.append(len(tokens))
        return plain_eval(tokens)

    llm.eval = counting_eval
    user1, user2 = {"role": "user", "content": spec["user1"]}, {"role": "user", "content": spec["user2"]}
    out = {"recurrent": bool(llm._is_recurrent), "hybrid": bool(llm._is_hybrid)}
    for variant in ("chat", "ids"):
        llm.reset()
        prompt = tokenize(render([user1]))
        answer = []
        start = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0):
            if token in spec["stop_ids"]:
                break
            answer.append(token)
            if len(answer) == spec["answer_tokens"]:
                break
        turn_one_s = time.perf_counter() - start
        if variant == "chat":
            # The same messages as ours got: our answer as the assistant message (the history
            # parts from what this process evaluated at the answer's start either way).
            turn_two = tokenize(render([user1, {"role": "assistant", "content": spec["reply"]}, user2]))
        else:
            # The template's text after the answer: the end of turn one, the new message, the prompt.
            marker = "\\x00answer\\x00"
            text = render([user1, {"role": "assistant", "content": marker}, user2])
            turn_two = prompt + answer + tokenize(text[text.index(marker) + len(marker):])
        held = llm.n_tokens
        evaluated.clear()
        start = time.perf_counter()
        tokens = llm.generate(turn_two, temp=0.0)
        next(tokens)
        ttft = time.perf_counter() - start
        tokens.close()
        ran = evaluated[0] if evaluated else 0
        out[variant] = {"turn_one_prompt_tokens": len(prompt), "answer_tokens": len(answer), "turn_one_s": turn_one_s,
                        "held_tokens": held, "prompt_tokens": len(turn_two), "reused_tokens": len(turn_two) - ran,
                        "evaluated_tokens": ran, "ttft_s": ttft,
                        "shared_with_held": next((i for i, (a, b) in enumerate(zip(prompt + answer, turn_two))
                                                  if a != b), min(held, len(turn_two)))}
    print(json.dumps(out))
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`switchyard serve` with one local backend (the model), as bench/turn_two.sh starts it."""

    def __init__(self, binary, model, quant, threads, workdir, tag):
        self.port = free_port()
        policy = Path(workdir) / f"turn-two-{tag}.yaml"
        quant_line = f"      quant: {quant}\n" if quant else ""
        policy.write_text(
            f"server:\n  listen: 127.0.0.1:{self.port}\nbackends:\n  local:\n    - name: local\n"
            f"      model_path: {Path(model).resolve()}\n{quant_line}      threads: {threads}\n"
            f"      context_length: 4096\n      queue_capacity: 4\nrouting:\n  local_backend: local\n"
            f"ladder: {{ enabled: false }}\n")
        self.log = Path(workdir) / f"turn-two-{tag}.log"
        start = time.time()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([binary, "serve", "--policy", str(policy)], stdout=subprocess.DEVNULL,
                                         stderr=log, env={**os.environ, "SWITCHYARD_LOG": "warn"})
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"daemon for {tag} exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() - start > 3600:
                self.stop()
                sys.exit(f"daemon for {tag} not ready after an hour")
            time.sleep(0.5)
        self.load_s = time.time() - start

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def chat(self, messages, max_tokens, stream):
        body = {"model": "local", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "chat_template_kwargs": TEMPLATE_KWARGS}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            sys.exit(f"daemon answered {resp.status}: {resp.read()[:2000]!r}\n{self.log.read_text()[-4000:]}")
        if not stream:
            return json.loads(resp.read())
        first, usage = None, None
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if first is None and (delta.get("content") or delta.get("reasoning_content")
                                      or choice.get("finish_reason")):
                    first = time.perf_counter() - start
            usage = event.get("usage") or usage
        return first, usage


def ours_turn_two(daemon, user1, reply, user2):
    ttft, usage = daemon.chat([{"role": "user", "content": user1}, {"role": "assistant", "content": reply},
                               {"role": "user", "content": user2}], 4, stream=True)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"prompt_tokens": usage["prompt_tokens"], "reused_tokens": cached,
            "evaluated_tokens": usage["prompt_tokens"] - cached, "ttft_s": ttft}


def ours_conversation(daemon, user1, user2, answer_tokens):
    start = time.perf_counter()
    one = daemon.chat([{"role": "user", "content": user1}], answer_tokens, stream=False)
    turn_one_s = time.perf_counter() - start
    reply = one["choices"][0]["message"].get("content") or ""
    rep = ours_turn_two(daemon, user1, reply, user2)
    rep.update(turn_one_prompt_tokens=one["usage"]["prompt_tokens"],
               answer_tokens=one["usage"]["completion_tokens"], turn_one_s=turn_one_s)
    return rep, reply


def cmd_turn_two(args):
    import llama_cpp
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    q6 = str(gguf_path(args.workdir, "q6_k"))
    vocab = llama_cpp.Llama(model_path=q6, vocab_only=True, verbose=False)
    template = json.loads((Path(args.checkpoint) / "tokenizer_config.json").read_text())["chat_template"]
    jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)

    def tokenize(text):
        return vocab.tokenize(text.encode(), add_bos=False, special=True)

    def one_turn(text):
        return jinja.render(messages=[{"role": "user", "content": text}], add_generation_prompt=True,
                            **TEMPLATE_KWARGS)

    def new_turn(text):
        """The template's text after turn one's answer, for a new user message `text`."""
        marker = "\x00answer\x00"
        rendered = jinja.render(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker},
                                          {"role": "user", "content": text}], add_generation_prompt=True,
                                **TEMPLATE_KWARGS)
        return rendered[rendered.index(marker) + len(marker):]

    user2 = sized_text(tokenize, "And then?", args.new_tokens, new_turn)
    ours_models = {"q6_k": (args.checkpoint, "q6_k"), "q4_k": (args.checkpoint, "q4_k"), "mlx6": (args.mlx, None)}
    if args.ours_on_gguf:
        ours_models.update({f"{q} gguf": (gguf_path(args.workdir, q), None) for q in ("q6_k", "q4_k")})
    results = {}

    def show(r, fmt, engine, rep):
        print(f"round {r + 1}: {fmt} {engine:16} turn two {rep['prompt_tokens']} tokens, reused "
              f"{rep['reused_tokens']}, ran {rep['evaluated_tokens']}, TTFT {1e3 * rep['ttft_s']:8.1f} ms",
              file=sys.stderr)

    for fmt, (model, quant) in ours_models.items():
        daemon = Daemon(args.switchyard, model, quant, args.threads, args.workdir, fmt.replace(" ", "-"))
        print(f"turn two: {fmt}: daemon ready in {daemon.load_s:.1f} s", file=sys.stderr)
        sides = {"switchyard chat": [], "switchyard cold": []}
        llama = fmt if fmt in ("q6_k", "q4_k") else None
        if llama:
            sides.update({"llama.cpp chat": [], "llama.cpp ids": []})
        try:
            for r in range(args.runs):
                user1 = sized_text(tokenize, f"Conversation {fmt} {r}.", args.prompt_tokens, one_turn)
                rep, reply = ours_conversation(daemon, user1, user2, args.answer_tokens)
                sides["switchyard chat"].append(rep)
                show(r, fmt, "switchyard chat", rep)
                # The same turn two (same answer), of a conversation the daemon never saw.
                cold_user1 = sized_text(tokenize, f"Conversation {fmt} {r} cold.", args.prompt_tokens, one_turn)
                rep = ours_turn_two(daemon, cold_user1, reply, user2)
                sides["switchyard cold"].append(rep)
                show(r, fmt, "switchyard cold", rep)
                if llama:
                    spec = {"template": template, "kwargs": TEMPLATE_KWARGS, "user1": user1, "user2": user2,
                            "reply": reply, "answer_tokens": args.answer_tokens, "stop_ids": STOP_IDS,
                            "n_ctx": 4096}
                    report, _ = base.run_once([sys.executable, "-c", LLAMA_CPP_TURNS,
                                               str(gguf_path(args.workdir, llama)), str(args.threads), json.dumps(spec)])
                    for variant in ("chat", "ids"):
                        rep = dict(report[variant], recurrent=report["recurrent"], hybrid=report["hybrid"])
                        sides[f"llama.cpp {variant}"].append(rep)
                        show(r, fmt, f"llama.cpp {variant}", rep)
        finally:
            daemon.stop()
        results[fmt] = sides

    def med(reps, key):
        values = [r[key] for r in reps if key in r]
        return statistics.median(values) if values else float("nan")

    print(f"\nTurn two: time to first token; turn one about {args.prompt_tokens} tokens (templated, thinking off) "
          f"and a {args.answer_tokens}-token answer; turn two adds about {args.new_tokens}; {args.threads} threads; "
          f"median of {args.runs} rounds")
    print(f"{'format':10}{'engine':17}{'turn one':>9}{'turn two':>9}{'reused':>8}{'ran':>6}{'TTFT ms':>10}")
    for fmt, sides in results.items():
        for engine, reps in sides.items():
            one = med(reps, "turn_one_prompt_tokens")
            print(f"{fmt:10}{engine:17}{'-' if one != one else f'{one:.0f}':>9}{med(reps, 'prompt_tokens'):9.0f}"
                  f"{med(reps, 'reused_tokens'):8.0f}{med(reps, 'evaluated_tokens'):6.0f}{1e3 * med(reps, 'ttft_s'):10.1f}")
    mismatched = [(fmt, o["turn_one_prompt_tokens"], t["turn_one_prompt_tokens"])
                  for fmt, sides in results.items() if "llama.cpp chat" in sides
                  for o, t in zip(sides["switchyard chat"], sides["llama.cpp chat"])
                  if o["turn_one_prompt_tokens"] != t["turn_one_prompt_tokens"]]
    if mismatched:
        print(f"note: turn one's prompt tokenized differently (format, ours, llama.cpp): {mismatched}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("checkpoint")
    p.add_argument("dir")
    p.add_argument("--shard-mb", type=int, default=5000, help="largest shard (save_pretrained's default: 5 GB)")
    p = sub.add_parser("mlx")
    p.add_argument("hf_dir")
    p.add_argument("out_dir")
    p.add_argument("--check-mlx", action="store_true",
                   help="compare each matrix's first rows with the mlx package's own mx.quantize")
    base.add_shared_commands(sub)
    for name in ("bench", "turn-two"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--mlx", required=True)
        p.add_argument("--workdir", required=True)
        p.add_argument("--switchyard", required=True)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--runs", type=int, default=3)
        p.add_argument("--prompt-tokens", type=int, default=512)
        p.add_argument("--ours-on-gguf", action="store_true",
                       help="also run Switchyard on llama.cpp's quantized GGUFs (same blocks, no quantizing at load)")
        p.add_argument("--json-out")
        if name == "bench":
            p.add_argument("--decode-tokens", type=int, default=128)
            p.add_argument("--bw-mib", type=int, default=1024)
        else:
            p.add_argument("--answer-tokens", type=int, default=32)
            p.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    {"checkpoint": cmd_checkpoint, "mlx": cmd_mlx, "convert": cmd_convert, "quantize": base.cmd_quantize,
     "bandwidth": base.cmd_bandwidth, "bench": cmd_bench, "turn-two": cmd_turn_two}[args.cmd](args)


if __name__ == "__main__":
    main()
