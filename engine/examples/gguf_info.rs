//! Prints a GGUF file's metadata (long arrays summarised) and tensor table.
//! `cargo run -p switchyard-engine --example gguf_info -- MODEL.gguf`

use switchyard_engine::gguf::{GgufFile, Value};

fn main() {
    let path = std::env::args().nth(1).expect("usage: gguf_info MODEL.gguf");
    let file = match GgufFile::open(path.as_ref()) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(1);
        }
    };
    println!("GGUF v{}, {} bytes", file.version, file.file_size());
    for key in file.metadata_keys() {
        let value = file.metadata(key).unwrap();
        match value {
            Value::Array(items) if items.len() > 8 => {
                println!("{key} = [{} items, first {:?}]", items.len(), &items[..3])
            }
            Value::Strings(strings) if strings.len() > 8 => {
                let first: Vec<&str> = strings.iter().take(3).collect();
                println!("{key} = [{} strings, first {first:?}]", strings.len())
            }
            Value::String(s) if s.len() > 200 => println!("{key} = {:?}... ({} chars)", &s[..200], s.len()),
            other => println!("{key} = {other:?}"),
        }
    }
    for t in file.tensors() {
        println!(
            "{:40} {:8} {:?} {} bytes",
            t.name,
            t.ggml_type.name(),
            t.dims,
            t.size_bytes
        );
    }
}
