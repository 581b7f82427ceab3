//! The deployment files: the replicas' policy is one the daemon accepts, and
//! the Kubernetes ConfigMap carries it word for word.

use std::path::Path;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
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
