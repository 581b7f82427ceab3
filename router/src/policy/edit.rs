//! Changes written into a policy file's text, keeping everything else as
//! the team wrote it: comments, order, spacing, flow or block style.

use regex::Regex;

use super::routing::BUILT_IN_THRESHOLDS;
use super::{AmbiguousChoice, Policy};

/// `text` with `routing.thresholds` set to `local_below` and `remote_above`
/// (`ambiguous` kept; the built-in choice when the file had no thresholds).
/// The result is checked: it must parse and say what was asked.
pub fn set_thresholds(text: &str, local_below: f32, remote_above: f32) -> Result<String, String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let is_content = |line: &str| {
        let trimmed = line.trim();
        !trimmed.is_empty() && !trimmed.starts_with('#')
    };
    let routing = lines
        .iter()
        .position(|l| indent(l) == 0 && l.trim_end().split('#').next().unwrap_or("").trim_end() == "routing:")
        .ok_or("the policy has no `routing:` section")?;
    let end = lines[routing + 1..]
        .iter()
        .position(|l| is_content(l) && indent(l) == 0)
        .map_or(lines.len(), |i| routing + 1 + i);
    // Every digit the threshold has: rounded, it could move past the score
    // of a request on the other side of it.
    let number = |v: f32| format!("{v}");
    let key = Regex::new(r"^(\s*)thresholds\s*:").expect("valid regex");
    let child_indent = lines[routing + 1..end]
        .iter()
        .find(|l| is_content(l))
        .map_or(2, |l| indent(l));
    let found = (routing + 1..end).find(|&i| indent(lines[i]) == child_indent && key.is_match(lines[i]));
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match found {
        Some(at) => {
            // The mapping: on the key's line (flow style, up to its closing
            // brace) or on the more indented lines below it (block style).
            let last = if lines[at].contains('{') {
                (at..end).find(|&i| lines[i].contains('}')).unwrap_or(at)
            } else {
                (at + 1..end)
                    .take_while(|&i| !is_content(lines[i]) || indent(lines[i]) > child_indent)
                    .last()
                    .unwrap_or(at)
            };
            for (name, value) in [("local_below", local_below), ("remote_above", remote_above)] {
                let pattern = Regex::new(&format!(r"(\b{name}\s*:\s*)[-+0-9.eE]+")).expect("valid regex");
                let hit = (at..=last).find(|&i| pattern.is_match(&out[i]));
                let Some(i) = hit else {
                    return Err(format!("routing.thresholds has no `{name}` to set"));
                };
                out[i] = pattern
                    .replace(&out[i], format!("${{1}}{}", number(value)))
                    .into_owned();
            }
        }
        None => {
            let ambiguous = match BUILT_IN_THRESHOLDS.ambiguous {
                AmbiguousChoice::LocalReasoning => "local-reasoning",
                AmbiguousChoice::Remote => "remote",
            };
            let line = format!(
                "{}thresholds: {{ local_below: {}, remote_above: {}, ambiguous: {ambiguous} }}\n",
                " ".repeat(child_indent),
                number(local_below),
                number(remote_above)
            );
            if !out[routing].ends_with('\n') {
                out[routing].push('\n');
            }
            out.insert(routing + 1, line);
        }
    }
    let edited = out.concat();
    let parsed = Policy::parse(&edited).map_err(|err| format!("the edited policy does not parse: {err}"))?;
    let set = parsed.routing.thresholds();
    let close = |a: f32, b: f32| a == b;
    if !close(set.local_below, local_below) || !close(set.remote_above, remote_above) {
        return Err("the edit did not set the thresholds (an unusual layout?); edit them by hand".into());
    }
    Ok(edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
# the team's policy
backends:
  remote:
    - name: cloud
      base_url: https://api.example.com/v1
      model: big
      price: { input_per_mtok_usd: 1, output_per_mtok_usd: 2 }
routing:
  remote_backends: [cloud]   # our only upstream
  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }  # tuned by hand
  aliases:
    fast: { local_below: 0.6, remote_above: 0.9, ambiguous: remote }
";

    #[test]
    fn flow_style_thresholds_are_set_and_the_rest_is_kept() {
        let edited = set_thresholds(POLICY, 0.55, 0.61).unwrap();
        assert_eq!(
            edited,
            POLICY.replace(
                "{ local_below: 0.3, remote_above: 0.7, ambiguous: remote }  # tuned",
                "{ local_below: 0.55, remote_above: 0.61, ambiguous: remote }  # tuned"
            )
        );
    }

    #[test]
    fn block_style_and_missing_thresholds_are_handled() {
        let block = POLICY.replace(
            "  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }  # tuned by hand\n",
            "  thresholds:\n    # below: local\n    local_below: 0.3\n    remote_above: 0.7\n    ambiguous: remote\n",
        );
        let edited = set_thresholds(&block, 0.4, 0.5).unwrap();
        assert!(
            edited.contains("    # below: local\n    local_below: 0.4\n    remote_above: 0.5\n"),
            "{edited}"
        );
        assert!(
            edited.contains("fast: { local_below: 0.6, remote_above: 0.9"),
            "aliases untouched: {edited}"
        );

        let missing = POLICY.replace(
            "  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }  # tuned by hand\n",
            "",
        );
        let edited = set_thresholds(&missing, 0.4, 0.5).unwrap();
        assert!(
            edited.contains("routing:\n  thresholds: { local_below: 0.4, remote_above: 0.5, ambiguous: "),
            "{edited}"
        );
        assert!(set_thresholds("backends: {}\n", 0.4, 0.5).is_err());
    }
}
