//! The local model's token embeddings pooled over each prompt of JSONL files
//! (rows with `id` and `prompt`): research input for the router, asking whether
//! a static semantic reading of the prompt ranks where the remote model gains.
//! Writes `OUT.f32` (per row, the embedding dimension's mean over the prompt's
//! tokens, then its maximum; little-endian f32) and `OUT.ids` (`id`, tab, the
//! prompt's token count). `bench/prompt_embeddings.py` reads both.
//! `cargo run --release -p switchyard-engine --example prompt_embeddings -- MODEL.gguf OUT IN.jsonl...`

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use switchyard_engine::gguf::GgufFile;
use switchyard_engine::quant::{QuantFormat, QuantMatrix};
use switchyard_engine::tokenizer::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, output, inputs @ ..] = args.as_slice() else {
        eprintln!("usage: prompt_embeddings MODEL.gguf OUT IN.jsonl...");
        std::process::exit(2);
    };
    let file = GgufFile::open(Path::new(model_path)).expect("open the model");
    let tokenizer = Tokenizer::from_gguf(&file).expect("the model's tokenizer");
    let info = file.tensor("token_embd.weight").expect("a token embedding table");
    let (dim, vocab) = (info.dims[0] as usize, info.dims[1] as usize);
    let data = file.read_tensor(info).expect("read the table");
    let format = QuantFormat::from_ggml_type(info.ggml_type.0).expect("a supported format");
    let matrix = QuantMatrix::new(format, vocab, dim, &data).expect("the table's shape");
    let mut table = vec![0f32; vocab * dim];
    for (token, row) in table.chunks_mut(dim).enumerate() {
        matrix.dequantize_row(token, row);
    }
    let mut vectors = BufWriter::new(std::fs::File::create(format!("{output}.f32")).expect("create OUT.f32"));
    let mut ids = BufWriter::new(std::fs::File::create(format!("{output}.ids")).expect("create OUT.ids"));
    for input in inputs {
        let reader = std::io::BufReader::new(std::fs::File::open(input).expect("open an input"));
        for line in reader.lines() {
            // Some RouterBench rows carry NaN labels, which JSON has no word for.
            let line = line.expect("read a line").replace(": NaN", ": null");
            let row: serde_json::Value = serde_json::from_str(&line).expect("a JSON row");
            let prompt = row["prompt"].as_str().expect("a prompt");
            let tokens = tokenizer.encode(prompt, false).expect("encode");
            let mut mean = vec![0f32; dim];
            let mut max = vec![if tokens.is_empty() { 0.0 } else { f32::NEG_INFINITY }; dim];
            for &token in &tokens {
                let embedding = &table[token as usize * dim..(token as usize + 1) * dim];
                for (i, &x) in embedding.iter().enumerate() {
                    mean[i] += x;
                    max[i] = max[i].max(x);
                }
            }
            let count = tokens.len().max(1) as f32;
            for x in mean.iter().map(|x| x / count).chain(max) {
                vectors.write_all(&x.to_le_bytes()).expect("write");
            }
            writeln!(ids, "{}\t{}", row["id"].as_str().expect("an id"), tokens.len()).expect("write");
        }
    }
}
