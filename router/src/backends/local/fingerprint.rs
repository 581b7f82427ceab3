//! Which model a local backend runs, by content: the SHA-256 of its weights.
//!
//! A router artifact trained on one local model's correctness records this
//! digest, so that serving it beside another model can be told (see
//! `routing::difficulty`). A GGUF file is hashed whole: its blocks are what
//! runs. A directory (Hugging Face or MLX) is hashed as its `config.json` and
//! `*.safetensors` files in name order, each as its name, its length and its
//! bytes, then the quantization its float weights get at load (the same
//! weights at 4 bits and at 8 answer differently): renaming the directory or
//! adding a README leaves the digest as it is.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use switchyard_engine::model::weights::Quantization;

fn hash_file(hasher: &mut Sha256, path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..n]);
    }
}

/// The model at `path`, loaded with `quant` (which only a directory's float
/// weights take), as 64 lower-case hex digits.
pub fn fingerprint(path: &Path, quant: Quantization) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && (p.file_name().is_some_and(|n| n == "config.json")
                        || p.extension().is_some_and(|x| x == "safetensors"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(std::io::Error::other(
                "no config.json or *.safetensors to identify the model by",
            ));
        }
        for file in files {
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(std::fs::metadata(&file)?.len().to_le_bytes());
            hash_file(&mut hasher, &file)?;
        }
        hasher.update(format!("quant={quant}").as_bytes());
    } else {
        hash_file(&mut hasher, path)?;
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_its_sha256_and_a_directory_its_weights() {
        let dir = std::env::temp_dir().join(format!("switchyard-fingerprint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.gguf");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(
            fingerprint(&file, Quantization::default()).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // A GGUF file's own blocks run, whatever the quantization asked.
        assert_eq!(
            fingerprint(&file, Quantization::parse("q8_0").unwrap()).unwrap(),
            fingerprint(&file, Quantization::default()).unwrap()
        );
        std::fs::remove_file(&file).unwrap();
        let fingerprint = |dir: &Path| fingerprint(dir, Quantization::default());
        assert!(fingerprint(&dir).is_err());
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
        let first = fingerprint(&dir).unwrap();
        std::fs::write(dir.join("README.md"), b"words").unwrap();
        assert_eq!(fingerprint(&dir).unwrap(), first);
        // The same weights quantized otherwise at load are another model.
        assert_ne!(
            super::fingerprint(&dir, Quantization::parse("q8_0").unwrap()).unwrap(),
            first
        );
        std::fs::write(dir.join("model.safetensors"), b"weightz").unwrap();
        assert_ne!(fingerprint(&dir).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
