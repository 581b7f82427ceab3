//! The routing brain's command line: `route eval` on the held-out quarter of
//! routellm_mmlu keeps the figures docs/routing.md reports, `route score` follows
//! its contract, `route explain` shows its working.

use std::process::Command;

use serde_json::Value;
use switchyard_e2e::{CloudDouble, daemon, policy_for};

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(daemon::binary()).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn data(name: &str) -> String {
    format!("{}/../router/data/routing/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// APGR and CPT(80%) of a row of `route eval`'s table.
fn figures(table: &str, router: &str) -> (f64, f64) {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {router}")))
        .unwrap_or_else(|| panic!("no {router} row in:\n{table}"));
    let cells: Vec<f64> = line
        .split('|')
        .filter_map(|c| c.trim().trim_end_matches('%').parse().ok())
        .collect();
    (cells[0], cells[2])
}

#[test]
fn route_eval_on_the_held_out_quarter_keeps_the_reported_figures() {
    let (ok, out, err) = switchyard(&["route", "eval", "--input", &data("routellm_mmlu_heldout.jsonl")]);
    assert!(ok, "{err}");
    let (ours, ours_cpt80) = figures(&out, "switchyard");
    let (baseline, _) = figures(&out, "TF-IDF");
    let (random, random_cpt80) = figures(&out, "random");
    let (oracle, _) = figures(&out, "oracle");
    // Measured: 0.670 / 0.596 (docs/routing.md). A regressed artifact fails here: with
    // the weak head also learning from RouterDC's 7B pairs it gave 0.659 / 0.595
    // without weight decay and 0.640 / 0.625 with it.
    assert!(ours >= 0.66 && ours_cpt80 <= 0.61, "{out}");
    assert!(ours > baseline + 0.02 && baseline > random, "{out}");
    assert!(
        (random - 0.5).abs() < 0.02 && (random_cpt80 - 0.8).abs() < 0.03,
        "{out}"
    );
    assert!(oracle > 1.0, "{out}");
}

#[test]
fn route_eval_on_unseen_math_word_problems_beats_random() {
    // GSM8K was never trained on. Structure learned on multiple-choice exams,
    // applied to open math, had ranked it at random (0.494 on this quarter).
    let (ok, out, err) = switchyard(&["route", "eval", "--input", &data("routellm/routellm_gsm8k_test.jsonl")]);
    assert!(ok, "{err}");
    let (ours, _) = figures(&out, "switchyard");
    let (random, _) = figures(&out, "random");
    // Measured: 0.585 against random 0.501 (docs/routing.md).
    assert!(ours >= 0.56 && ours > random + 0.05, "{out}");
}

fn route_score(input: &std::path::Path, output: &std::path::Path) -> (bool, String, String) {
    switchyard(&[
        "route",
        "score",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ])
}

#[test]
fn route_score_writes_one_score_per_row_for_prompts_and_messages() {
    let dir = daemon::scratch_dir("route-score");
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"a\", \"prompt\": \"What is 2 + 2?\"}\n",
            "{\"id\": 7, \"messages\": [{\"role\": \"user\", \"content\": \"Prove Fermat's last theorem for n = 4.\"}]}\n",
        ),
    )
    .unwrap();
    let (ok, _, err) = route_score(&input, &output);
    assert!(ok, "{err}");
    let rows: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["id"].clone(), rows[1]["id"].clone()),
        (Value::from("a"), Value::from(7))
    );
    for row in &rows {
        let score = row["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{row}");
        assert_eq!(row.as_object().unwrap().len(), 2, "{row}");
    }
    // A bad row is named by its line, and the previous output is left whole.
    let before = std::fs::read_to_string(&output).unwrap();
    for (rows, why) in [
        (
            "{\"id\": 1, \"prompt\": \"fine\"}\n\n{\"prompt\": \"no id\"}\n",
            "in.jsonl:3: no `id`",
        ),
        (
            "{\"id\": 1, \"prompt\": 12}\n",
            "in.jsonl:1: `prompt` is a number, not a string",
        ),
        (
            "{\"id\": 1, \"messages\": []}\n",
            "in.jsonl:1: Invalid 'messages': empty array",
        ),
    ] {
        std::fs::write(&input, rows).unwrap();
        let (ok, _, err) = route_score(&input, &output);
        assert!(!ok && err.contains(why), "{why}: {err}");
        assert_eq!(std::fs::read_to_string(&output).unwrap(), before);
    }
}

#[test]
fn route_eval_names_a_malformed_row_instead_of_leaving_it_out() {
    let dir = daemon::scratch_dir("route-eval-rows");
    let input = dir.join("labelled.jsonl");
    let row = |strong: &str, label: &str| {
        format!(
            "{{\"id\": \"r\", \"prompt\": \"q\", \"labels\": {{\"big\": {label}, \"small\": 0.0}}, \"strong\": \"{strong}\", \"weak\": \"small\"}}\n"
        )
    };
    for (rows, why) in [
        (
            row("big", "1.0") + &row("bigg", "1.0"),
            "labelled.jsonl:2: no label for `bigg` in `labels`",
        ),
        (
            row("big", "1.0") + &row("big", "7"),
            "labelled.jsonl:2: the label of `big` is 7, outside [0, 1]",
        ),
    ] {
        std::fs::write(&input, rows).unwrap();
        let (ok, _, err) = switchyard(&["route", "eval", "--input", input.to_str().unwrap()]);
        assert!(!ok && err.contains(why), "{why}: {err}");
    }
    // A model that was not scored on a prompt (a null label) is no error: the
    // row is left out, and said to be.
    std::fs::write(&input, row("big", "1.0") + &row("big", "0.0") + &row("big", "null")).unwrap();
    let (ok, out, err) = switchyard(&["route", "eval", "--input", input.to_str().unwrap()]);
    assert!(
        ok && out.starts_with("2 rows") && err.contains("1 rows left out"),
        "{out}{err}"
    );
}

#[test]
fn route_explain_prints_features_score_and_decision() {
    let double = CloudDouble::start();
    let dir = daemon::scratch_dir("route-explain");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, policy_for(&double.base_url(), "")).unwrap();
    let output = Command::new(daemon::binary())
        .args([
            "route",
            "explain",
            "--policy",
            policy.to_str().unwrap(),
            "Which is larger?\nA. 2\nB. 3",
        ])
        .env("DOUBLE_API_KEY", "x")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let explained: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(explained["features"]["question_type"], "multiple-choice");
    assert_eq!(explained["features"]["options"], 2);
    let score = explained["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));
    // The score is the expected gain of the strong model: (1 + s - w) / 2.
    let strong = explained["chance_strong_answers_well"].as_f64().unwrap();
    let weak = explained["chance_weak_answers_well"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&strong) && (0.0..=1.0).contains(&weak),
        "{explained}"
    );
    assert!((score - (1.0 + strong - weak) / 2.0).abs() < 1e-6, "{explained}");
    assert_eq!(explained["decision"]["route"], "remote", "{explained}");
    assert!(explained["decision"]["reason"].is_string());
}

#[test]
fn route_train_reads_every_data_dir_and_never_trains_on_test_files() {
    let dir = daemon::scratch_dir("route-train");
    let first = dir.join("first");
    std::fs::create_dir_all(&first).unwrap();
    // 300 MMLU rows as a training file of a first directory.
    let sample = std::fs::read_to_string(data("routellm_mmlu_train_sample.jsonl")).unwrap();
    let rows: Vec<&str> = sample.lines().take(300).collect();
    std::fs::write(first.join("mmlu_sample_train.jsonl"), rows.join("\n")).unwrap();
    // Five rows of a pair of 7-8B models (RouterDC's format): the baseline
    // learns from them, the difficulty model does not.
    let sevens: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "{{\"id\": \"routerdc7_tiny/{i}\", \"source\": \"routerdc7_tiny\", \"prompt\": \"Question {i}: which is larger?\", \"label_kind\": \"correct_0_1\", \"labels\": {{\"cognitivecomputations/dolphin-2.9-llama3-8b\": 1.0, \"mistralai/Mistral-7B-v0.1\": 0.0}}}}"
            )
        })
        .collect();
    std::fs::write(first.join("routerdc7_tiny_train.jsonl"), sevens.join("\n")).unwrap();
    let second = data("routellm");
    let count = |name: &str| {
        std::fs::read_to_string(format!("{second}/{name}"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    let out_dir = dir.join("out");
    let (ok, out, err) = switchyard(&[
        "route",
        "train",
        "--data-dir",
        first.to_str().unwrap(),
        "--data-dir",
        &second,
        "--epochs",
        "1",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let trained = 300 + count("routellm_gsm8k_train.jsonl") + count("routellm_mt_bench_train.jsonl");
    assert!(err.contains(&format!("training on {} rows", trained + 5)), "{err}");
    assert!(
        err.contains(&format!("learns from the {trained} of them with a remote-class pair")),
        "{err}"
    );
    // Each test file is reported, as never trained on.
    for name in ["routellm_gsm8k_test", "routellm_mt_bench_test"] {
        let rows = count(&format!("{name}.jsonl"));
        assert!(
            out.contains(&format!("{name} ({rows} rows, never trained on)")),
            "{out}"
        );
    }
    assert!(!out.contains("NaN"), "no table for an empty held-out set:\n{out}");
    // The artifact it wrote loads and scores.
    let (ok, out, err) = switchyard(&[
        "route",
        "eval",
        "--input",
        &data("routellm/routellm_gsm8k_test.jsonl"),
        "--model",
        out_dir.join("difficulty.bin").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (apgr, _) = figures(&out, "switchyard");
    assert!(apgr.is_finite(), "{out}");
}

#[test]
fn route_eval_reads_graded_multi_turn_chat_rows() {
    // MT-Bench: judge scores in [0, 1], second turns as conversations; both
    // quarters at once, one --input per file.
    let files = [
        data("routellm/routellm_mt_bench_train.jsonl"),
        data("routellm/routellm_mt_bench_test.jsonl"),
    ];
    let (ok, out, err) = switchyard(&["route", "eval", "--input", &files[0], "--input", &files[1]]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect();
    let mean = |model: &str| rows.iter().map(|r| r["labels"][model].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
    let header = format!(
        "{} rows; quality all weak {:.3}, all strong {:.3}",
        rows.len(),
        mean("mixtral-8x7b-instruct"),
        mean("gpt-4-1106-preview")
    );
    assert!(out.starts_with(&header), "{header}\n{out}");
    assert!(rows.iter().any(|r| r["turn"] == 2));
    let (oracle, _) = figures(&out, "oracle");
    assert!(oracle > 1.0, "{out}");
}

/// A file's SHA-256 as `sha256sum` prints it.
fn sha256_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The rows of a JSON Lines file.
fn rows_of(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn route_label_and_train_give_a_router_for_the_local_model_that_serve_recognises() {
    let model = switchyard_e2e::default_model();
    let dir = daemon::scratch_dir("route-label");
    let data_dir = dir.join("labelled");
    std::fs::create_dir_all(&data_dir).unwrap();
    // 40 MMLU rows with their gold letters, a short-answer row, and one row
    // without a gold answer (nothing to check it by: left out).
    let sample = std::fs::read_to_string(data("routellm_mmlu_train_sample.jsonl")).unwrap();
    let mut rows: Vec<String> = sample
        .lines()
        .filter(|l| l.contains("\"answer\""))
        .take(40)
        .map(String::from)
        .collect();
    rows.push(r#"{"id": "short/1", "source": "tiny", "prompt": "What is 6 times 7? Reply with the number only.", "answer": "42", "labels": {"gpt-4-1106-preview": 1.0}, "strong": "gpt-4-1106-preview"}"#.into());
    rows.push(r#"{"id": "open/1", "source": "tiny", "prompt": "Write a haiku.", "labels": {"gpt-4-1106-preview": 1.0}, "strong": "gpt-4-1106-preview"}"#.into());
    let input = dir.join("in.jsonl");
    std::fs::write(&input, rows.join("\n")).unwrap();
    let output = data_dir.join("routellm_mmlu.jsonl");
    let label = || {
        switchyard(&[
            "route",
            "label",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--threads",
            "2",
        ])
    };
    let (ok, _, err) = label();
    assert!(ok, "{err}");
    assert!(
        err.contains("41 rows labelled") && err.contains("1 without a gold answer"),
        "{err}"
    );
    let sha = sha256_of(&model);
    let name = format!("{}@{}", model.file_stem().unwrap().to_string_lossy(), &sha[..16]);
    let labelled = rows_of(&output);
    assert_eq!(labelled.len(), 41);
    for row in &labelled {
        assert_eq!(row["weak"], name.as_str(), "{row}");
        assert_eq!(row["weak_sha256"], sha.as_str(), "{row}");
        let label = row["labels"][&name].as_f64().unwrap();
        assert!(label == 0.0 || label == 1.0, "{row}");
        // What it was right or wrong about: its pick, for a multiple-choice row.
        let said = row["predictions"][&name].as_str().unwrap();
        if row["source"] == "routellm_mmlu" {
            assert_eq!(label == 1.0, said == row["answer"].as_str().unwrap(), "{row}");
            assert!(["A", "B", "C", "D"].contains(&said), "{row}");
        }
        // The cloud model's label is kept beside it.
        assert!(row["labels"]["gpt-4-1106-preview"].is_number(), "{row}");
    }
    // Cut mid-row, it resumes: the same rows, each once, the same labels.
    let whole = std::fs::read_to_string(&output).unwrap();
    let cut = whole.len() - whole.lines().last().unwrap().len() / 2 - 1;
    std::fs::write(&output, &whole.as_bytes()[..cut]).unwrap();
    let (ok, _, err) = label();
    assert!(ok, "{err}");
    assert!(
        err.contains("1 rows labelled") && err.contains("40 already there"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);

    // Trained on them, the artifact records the model; the held-out quarter
    // (by prompt hash) is never trained on and is reported.
    let out_dir = dir.join("out");
    let (ok, _, err) = switchyard(&[
        "route",
        "train",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--epochs",
        "2",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let artifact = out_dir.join("difficulty.bin");
    let bytes = std::fs::read(&artifact).unwrap();
    assert!(
        String::from_utf8_lossy(&bytes[..400]).contains(&sha),
        "the artifact names the model"
    );

    // A weak side of two models is refused.
    let mixed = dir.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    let mut other = labelled.clone();
    for row in other.iter_mut().take(10) {
        row["weak_sha256"] = Value::from("0".repeat(64));
    }
    let text: Vec<String> = other.iter().map(Value::to_string).collect();
    std::fs::write(mixed.join("routellm_mmlu.jsonl"), text.join("\n")).unwrap();
    let (ok, _, err) = switchyard(&[
        "route",
        "train",
        "--data-dir",
        mixed.to_str().unwrap(),
        "--epochs",
        "1",
        "--out-dir",
        dir.join("never").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("several models"), "{err}");

    // Served beside the model it was trained for, it is recognised; the
    // shipped one, trained on cloud pairs, is not, and the log says what to do.
    let double = CloudDouble::start();
    let routing = format!("difficulty_model: {}", artifact.display());
    let policy = switchyard_e2e::local_and_echo_policy(&double.base_url(), &[], &[&routing], "");
    let served = daemon::Daemon::start(&policy, &[("DOUBLE_API_KEY", "x")]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(served.until_logged("the difficulty model was trained on this local model's answers"));
    assert!(!served.log().contains("route label"), "{}", served.log());
    // The shipped model learned GPT-4 against Mixtral: said at the start.
    let plain = switchyard_e2e::local_and_echo_policy(&double.base_url(), &[], &[], "");
    let shipped = daemon::Daemon::start(&plain, &[("DOUBLE_API_KEY", "x")]);
    runtime.block_on(shipped.until_logged("learned cloud model pairs"));
    // A model of other weights is not the one.
    let copy = dir.join("other.gguf");
    let mut weights = std::fs::read(&model).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(&copy, weights).unwrap();
    let policy = switchyard_e2e::local_and_echo_policy(&double.base_url(), &[], &[&routing], "")
        .replace(&model.display().to_string(), &copy.display().to_string());
    let other = daemon::Daemon::start(&policy, &[("DOUBLE_API_KEY", "x")]);
    runtime.block_on(other.until_logged("switchyard route label"));
    assert!(
        other.log().contains(&format!("learned the answers of {name}")),
        "{}",
        other.log()
    );
    // A missing artifact stops the start, named.
    let policy = switchyard_e2e::local_and_echo_policy(&double.base_url(), &[], &["difficulty_model: nowhere.bin"], "");
    let (code, log) = daemon::refused_start(
        daemon::scratch_dir("route-label-missing"),
        "127.0.0.1:0",
        &policy,
        &[("DOUBLE_API_KEY", "x")],
    );
    assert_ne!(code, Some(0));
    assert!(
        log.contains("routing.difficulty_model") && log.contains("nowhere.bin"),
        "{log}"
    );
}

#[test]
fn the_shipped_router_for_smollm2_ranks_its_held_out_rows_above_random_and_the_cloud_pair_router() {
    let input = data("smollm2/routellm_mmlu_smollm2_test.jsonl");
    let artifact = format!("{}/../router/assets/difficulty-smollm2.bin", env!("CARGO_MANIFEST_DIR"));
    let (ok, out, err) = switchyard(&["route", "eval", "--input", &input, "--model", &artifact]);
    assert!(ok, "{err}");
    let (ours, ours_cpt80) = figures(&out, "switchyard");
    let (random, _) = figures(&out, "random");
    let (ok, out_shipped, err) = switchyard(&["route", "eval", "--input", &input]);
    assert!(ok, "{err}");
    let (shipped, _) = figures(&out_shipped, "switchyard");
    // Measured (docs/routing.md, "A router for your local model"): 0.571 / 0.685,
    // the cloud pair's router 0.478, random 0.501.
    assert!(ours >= 0.565 && ours_cpt80 <= 0.70, "{out}");
    assert!(ours > random + 0.03 && ours > shipped + 0.05, "{out}\n{out_shipped}");
    // It was trained for the embedded model's weights, and says so.
    let model = switchyard_e2e::default_model();
    let sha = sha256_of(&model);
    let bytes = std::fs::read(&artifact).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..400]).contains(&sha));
}
