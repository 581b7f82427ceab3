//! `switchyard generate` and `switchyard chat`: the local engine from the terminal.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value, json};
use switchyard_engine::constraint::{Grammar, Grammars};
use switchyard_engine::engine::{ComputeBackend, LoadOptions, LocalModel, default_threads, encode_conversation};
use switchyard_engine::generate::{GenerationRequest, TokenEvent};
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::SamplingParams;
use switchyard_engine::thinking::Thinking;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("prompt_source").required(true).args(["prompt", "raw_prompt", "prompt_ids"])))]
pub struct GenerateArgs {
    /// GGUF model file, or Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// A user message, rendered with the model's chat template (with
    /// `enable_thinking` as --thinking says, when given).
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt text, tokenized as is: special tokens are parsed, no chat template is applied.
    #[arg(long)]
    raw_prompt: Option<String>,
    /// Prompt token ids, comma-separated (`1,2,3`), given to the model as they are.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// What a Hugging Face checkpoint's float weights become: q8_0, q6_k, q4_k, q4_0 or none.
    #[arg(long, default_value_t = Quantization::default(), value_parser = parse_quant)]
    quant: Quantization,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Compute threads (default: all cores, at most 8).
    #[arg(long)]
    threads: Option<usize>,
    /// Burn backend to compute on: flex, or ndarray (for comparison; builds with the `ndarray` feature).
    #[arg(long, default_value_t = ComputeBackend::Flex)]
    backend: ComputeBackend,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
    /// Generate exactly --max-tokens tokens, through end-of-turn tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    thinking: ThinkingArgs,
    /// The answer must be valid against this JSON Schema (a file).
    #[arg(long, group = "grammar")]
    json_schema: Option<PathBuf>,
    /// The answer must be a JSON object.
    #[arg(long, group = "grammar")]
    json_object: bool,
    /// The answer must match this regular expression.
    #[arg(long, group = "grammar")]
    regex: Option<String>,
}

impl GenerateArgs {
    /// The grammar asked for, if any.
    fn grammar(&self) -> Result<Option<Grammar>, String> {
        if let Some(path) = &self.json_schema {
            let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
            let schema = serde_json::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
            return Ok(Some(Grammar::JsonSchema(schema)));
        }
        if self.json_object {
            return Ok(Some(Grammar::JsonObject));
        }
        Ok(self.regex.clone().map(Grammar::Regex))
    }
}

/// Thinking, for a model that thinks natively (`<think>` blocks).
#[derive(clap::Args)]
pub struct ThinkingArgs {
    /// `on`: the model may think (within --thinking-budget); `off`: it does not
    /// (its template is told so, and a block it opens anyway is closed at once).
    /// Unset: as the model and its template do by default. Either way the
    /// output's reasoning is told apart from its answer.
    #[arg(long, value_parser = ["on", "off"])]
    thinking: Option<String>,
    /// Thinking tokens at most, after which `</think>` is forced and the answer follows.
    #[arg(long)]
    thinking_budget: Option<usize>,
}

impl ThinkingArgs {
    /// The thinking of a generation on `model`, and the template's
    /// `enable_thinking`; an error when thinking is asked of a model that
    /// does not think.
    fn resolve(&self, model: &LocalModel) -> Result<(Option<Thinking>, Map<String, Value>), String> {
        let on = self.thinking.as_deref().map(|mode| mode == "on");
        let Some(markers) = &model.thinking else {
            return match (on, self.thinking_budget) {
                (None, None) => Ok((None, Map::new())),
                _ => Err("--thinking and --thinking-budget need a model that thinks in <think> blocks".into()),
            };
        };
        let budget = match on {
            Some(false) => Some(0),
            _ => self.thinking_budget,
        };
        let mut extra = Map::new();
        if let Some(on) = on {
            extra.insert("enable_thinking".into(), Value::Bool(on));
        }
        let thinking = Thinking {
            markers: markers.clone(),
            budget,
        };
        Ok((Some(thinking), extra))
    }
}

#[derive(clap::Args)]
pub struct ChatArgs {
    /// GGUF model file, or Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// What a Hugging Face checkpoint's float weights become: q8_0, q6_k, q4_k, q4_0 or none.
    #[arg(long, default_value_t = Quantization::default(), value_parser = parse_quant)]
    quant: Quantization,
    /// A system message for the conversation.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long)]
    threads: Option<usize>,
    /// Burn backend to compute on: flex, or ndarray (for comparison; builds with the `ndarray` feature).
    #[arg(long, default_value_t = ComputeBackend::Flex)]
    backend: ComputeBackend,
    #[command(flatten)]
    thinking: ThinkingArgs,
}

pub(crate) fn parse_quant(name: &str) -> Result<Quantization, String> {
    Quantization::parse(name).ok_or_else(|| format!("expected one of {}", Quantization::NAMES))
}

pub(crate) fn load(
    path: &Path,
    threads: Option<usize>,
    backend: ComputeBackend,
    quant: Quantization,
) -> Result<(LocalModel, rayon::ThreadPool), String> {
    let options = LoadOptions {
        backend,
        quant,
        ..LoadOptions::default()
    };
    let model = LocalModel::load_with(path, &options).map_err(|err| format!("{}: {err}", path.display()))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or_else(default_threads).max(1))
        .build()
        .map_err(|err| err.to_string())?;
    Ok((model, pool))
}

pub fn generate(args: &GenerateArgs) -> ExitCode {
    let (model, pool) = match load(&args.model, args.threads, args.backend, args.quant) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (thinking, extra) = match args.thinking.resolve(&model) {
        Ok(resolved) => resolved,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Clap requires one of the three.
    let prompt_tokens = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => Ok(ids.clone()),
        (None, Some(prompt)) => encode_conversation(
            &model.tokenizer,
            model.template.as_deref(),
            model.context_length,
            &json!([{ "role": "user", "content": prompt }]),
            &extra,
        )
        .map_err(|err| err.to_string()),
        (None, None) => model
            .tokenizer
            .encode(args.raw_prompt.as_deref().unwrap_or_default(), true)
            .map_err(|err| format!("cannot tokenize the prompt: {err}")),
    };
    let prompt_tokens = match prompt_tokens {
        Ok(tokens) => tokens,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The grammar is compiled against the model's vocabulary before anything runs.
    let constraint = match args.grammar().and_then(|grammar| {
        grammar
            .map(|grammar| Grammars::of(model.tokenizer.clone(), model.model.vocab_size())?.constraint(&grammar))
            .transpose()
    }) {
        Ok(constraint) => constraint,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    let request = GenerationRequest {
        prompt_tokens: prompt_tokens.clone(),
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
        top_logprobs: 0,
        ignore_eos: args.ignore_eos,
        deadline: None,
        thinking,
        constraint,
    };
    let stream = !args.json;
    let mut shown = Shown::default();
    let result = pool.install(|| {
        model.generate(&request, |event| {
            if stream {
                shown.print(event);
            }
            ControlFlow::Continue(())
        })
    });
    let output = match result {
        Ok(output) => output,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let report = json!({
            "prompt_tokens": prompt_tokens,
            "tokens": output.tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
            "text": output.text,
            "reasoning": output.reasoning,
            "reasoning_tokens": output.reasoning_tokens,
            "first_step_top5": output.first_step_top.iter().take(5).map(|&(id, lp)| json!([id, lp])).collect::<Vec<_>>(),
            "prefill_tokens_per_s": output.prefill_tokens_per_s(),
            "decode_tokens_per_s": output.decode_tokens_per_s(),
        });
        println!("{report}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens at {:.1} tokens/s, {} generated at {:.1} tokens/s]",
            output.prompt_tokens,
            output.prefill_tokens_per_s(),
            output.tokens.len(),
            output.decode_tokens_per_s()
        );
    }
    ExitCode::SUCCESS
}

pub fn chat(args: &ChatArgs) -> ExitCode {
    let (model, pool) = match load(&args.model, args.threads, args.backend, args.quant) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    if model.template.is_none() {
        eprintln!("switchyard: {} has no chat template", args.model.display());
        return ExitCode::FAILURE;
    }
    let (thinking, extra) = match args.thinking.resolve(&model) {
        Ok(resolved) => resolved,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut messages: Vec<Value> = args
        .system
        .iter()
        .map(|s| json!({"role": "system", "content": s}))
        .collect();
    eprintln!(
        "Chatting with {}. /reset starts over, /exit or Ctrl-D ends.",
        args.model.display()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(Ok(line)) = lines.next() else { break };
        match line.trim() {
            "" => continue,
            "/exit" => break,
            "/reset" => {
                messages.retain(|m| m["role"] == "system");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        // As the daemon does: what is typed is text, the template's markers
        // the only control tokens.
        let conversation = Value::Array(messages.clone());
        let encoded = encode_conversation(
            &model.tokenizer,
            model.template.as_deref(),
            model.context_length,
            &conversation,
            &extra,
        );
        let prompt_tokens = match encoded {
            Ok(tokens) => tokens,
            Err(err) => {
                eprintln!("switchyard: {err}");
                messages.pop();
                continue;
            }
        };
        let sampling = SamplingParams {
            temperature: args.temperature,
            ..SamplingParams::default()
        };
        let request = GenerationRequest {
            thinking: thinking.clone(),
            ..GenerationRequest::new(prompt_tokens, args.max_tokens, sampling)
        };
        let mut shown = Shown::default();
        let result = pool.install(|| {
            model.generate(&request, |event| {
                shown.print(event);
                ControlFlow::Continue(())
            })
        });
        println!();
        match result {
            Ok(output) => messages.push(json!({
                "role": "assistant",
                "content": output.text,
                "reasoning_content": output.reasoning,
            })),
            Err(err) => {
                eprintln!("switchyard: {err}");
                messages.pop();
            }
        }
    }
    ExitCode::SUCCESS
}

/// Prints text as it comes, the reasoning on standard error between
/// `<think>` and `</think>` lines, the answer on standard output.
#[derive(Default)]
struct Shown {
    in_reasoning: bool,
}

impl Shown {
    fn print(&mut self, event: &TokenEvent) {
        if event.text.is_empty() {
            return;
        }
        if event.reasoning != self.in_reasoning {
            eprintln!("{}", if event.reasoning { "<think>" } else { "\n</think>" });
            self.in_reasoning = event.reasoning;
        }
        if event.reasoning {
            eprint!("{}", event.text);
        } else {
            print!("{}", event.text);
            let _ = std::io::stdout().flush();
        }
    }
}
