//! The deployment files: the replicas' policy is one the daemon accepts, the
//! Kubernetes ConfigMap carries it word for word, and the manifests are valid
//! Kubernetes objects.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// `kubernetes-validate --strict` (the Kubernetes API's own JSON schemas,
/// unknown fields refused) on `files`: whether all passed, and its output.
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let python = switchyard_e2e::python();
    let output = Command::new(&python)
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_replicas_policy_passes_the_check_and_shares_state_through_redis() {
    let policy = repo_file("deploy/policy.yaml");
    let (ok, text) = switchyard_e2e::daemon::policy_check(&policy);
    assert!(ok, "{text}");
    assert!(policy.contains("backend: redis"), "the replicas share their state");
}

#[test]
fn the_configmap_holds_the_replicas_policy_word_for_word() {
    let policy = repo_file("deploy/policy.yaml");
    let configmap = repo_file("deploy/k8s/configmap.yaml");
    let (_, block) = configmap
        .split_once("  policy.yaml: |\n")
        .expect("the ConfigMap's policy.yaml entry");
    let embedded: String = block
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert_eq!(
        embedded.trim_end(),
        policy.trim_end(),
        "deploy/k8s/configmap.yaml must carry deploy/policy.yaml as it is"
    );
}

#[test]
fn the_kubernetes_manifests_are_valid_objects_of_the_api() {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 5, "{manifests:?}");
    let (ok, text) = kubernetes_validate(&manifests);
    assert!(ok, "{text}");
    for path in &manifests {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            text.contains(&format!("{name} passed")),
            "{name} was not checked:\n{text}"
        );
    }

    // The validator refuses what a cluster would: a misspelt field.
    let misspelt = switchyard_e2e::daemon::scratch_dir("k8s").join("deployment.yaml");
    let deployment = repo_file("deploy/k8s/deployment.yaml");
    assert!(deployment.contains("readOnlyRootFilesystem"));
    std::fs::write(
        &misspelt,
        deployment.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
    )
    .unwrap();
    let (ok, text) = kubernetes_validate(&[misspelt]);
    assert!(!ok && text.contains("readOnlyRootFileSystem"), "{text}");
}
