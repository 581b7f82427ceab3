//! What can be wrong with a policy file, located: a [`Problem`] per fault of
//! meaning, the YAML parser's shape errors made into one, and the
//! [`PolicyError`] that loading returns.

use std::fmt;
use std::path::Path;

use serde_saphyr::Spanned;

pub(super) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

/// One thing wrong with a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the location is unknown (a default value, say).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl Problem {
    /// A problem of the file as a whole (line and column 0).
    pub(crate) fn whole(message: impl Into<String>) -> Self {
        Self {
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    /// A problem at a value of the file. Only `policy/` sees spans; the rest
    /// of the crate asks a config for a problem located at its own value.
    pub(super) fn at<T>(spanned: &Spanned<T>, message: impl Into<String>) -> Self {
        Self {
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Why a policy could not be loaded: the file could not be read, or it has problems.
#[derive(Debug)]
pub enum PolicyError {
    Read(std::io::Error),
    Invalid(Vec<Problem>),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Read(err) => write!(f, "cannot read policy file: {err}"),
            PolicyError::Invalid(problems) => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    /// The error as a report on the file it came from: one `FILE:LINE:COL: problem`
    /// line per problem, or `FILE: cannot read: ...`.
    pub fn in_file(&self, path: &Path) -> String {
        match self {
            PolicyError::Read(err) => format!("{}: cannot read: {err}", path.display()),
            PolicyError::Invalid(problems) => problems
                .iter()
                .map(|problem| format!("{}:{problem}", path.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

pub(super) fn check_env_name(env: &Spanned<String>, problems: &mut Vec<Problem>) {
    let valid = !env.value.is_empty()
        && !env.value.starts_with(|c: char| c.is_ascii_digit())
        && env.value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        problems.push(Problem::at(
            env,
            format!("{:?} is not an environment variable name", env.value),
        ));
    }
}

/// A serde-saphyr error as one located problem. Its `Display` renders a source
/// snippet; we want the bare `line:column: message` that editors and CI parse.
pub(super) fn shape_problem(err: &serde_saphyr::Error, text: &str) -> Problem {
    let (line, column) = err.location().map(|loc| (loc.line(), loc.column())).unwrap_or((0, 0));
    let mut message = bare_message(err);
    if let Some(hint) = misindented_hint(&message, text, line, column) {
        message.push_str(&hint);
    }
    // A flow collection left open is noticed only where its content stops
    // making sense, a line or more later: the parser gives up there, or a
    // plain scalar swallows the next lines and its value is refused. The
    // mistake is the opening bracket, so that is where the problem is.
    if let Some((opener, open_line, open_column)) = unclosed_flow_opening(text)
        && (line, column) >= (open_line, open_column)
    {
        return Problem {
            line: open_line,
            column: open_column,
            message: format!("this `{}` is never closed ({message})", opener as char),
        };
    }
    Problem { line, column, message }
}

/// The innermost `{` or `[` that opens a flow collection and is never closed
/// in the whole text, as `(bracket, line, column)`. Brackets in quoted
/// scalars, in comments and inside plain scalars (`a{2}`) do not count.
fn unclosed_flow_opening(text: &str) -> Option<(u8, u64, u64)> {
    let mut open: Vec<(u8, u64, u64)> = Vec::new();
    for (at_line, content) in (1u64..).zip(text.lines()) {
        let mut quote: Option<u8> = None;
        // The last byte that is not a space: what a bracket or quote follows.
        let mut previous = b'\n';
        for (at_column, &byte) in (1u64..).zip(content.as_bytes()) {
            match quote {
                Some(b'"') if byte == b'"' && previous != b'\\' => quote = None,
                Some(b'\'') if byte == b'\'' => quote = None,
                Some(_) => {}
                None => {
                    let starts_a_node = matches!(previous, b'\n' | b':' | b'-' | b',' | b'[' | b'{' | b'?');
                    match byte {
                        b'#' if content.as_bytes()[..at_column as usize - 1]
                            .last()
                            .is_none_or(u8::is_ascii_whitespace) =>
                        {
                            break;
                        }
                        b'"' | b'\'' if starts_a_node => quote = Some(byte),
                        b'{' | b'[' if starts_a_node => open.push((byte, at_line, at_column)),
                        b'}' | b']' if !open.is_empty() => {
                            open.pop();
                        }
                        _ => {}
                    }
                }
            }
            if !matches!(byte, b' ' | b'\t') {
                previous = byte;
            }
        }
    }
    open.pop()
}

/// For a "missing field `KEY`" problem: the nearest line that does set `KEY`,
/// but at another indentation than the mapping's keys (column `column`), is
/// most likely the key the reader was looking for.
fn misindented_hint(message: &str, text: &str, line: u64, column: u64) -> Option<String> {
    let key = message.strip_prefix("missing field `")?.strip_suffix('`')?;
    let want = column.checked_sub(1)? as usize;
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let body = l.trim_start();
            let body = body.strip_prefix("- ").map_or(body, str::trim_start);
            let indent = l.len() - body.len();
            let rest = body.strip_prefix(key)?.trim_start();
            (rest.starts_with(':') && indent != want).then_some((i as u64 + 1, indent))
        })
        .min_by_key(|(at, _)| at.abs_diff(line))
        .map(|(at, indent)| {
            format!(" (line {at} sets `{key}` indented {indent} spaces; the other keys here are indented {want})")
        })
}

fn bare_message(err: &serde_saphyr::Error) -> String {
    let rendered = err.to_string();
    // The first line is the message; the rest is the snippet.
    let first = rendered.lines().next().unwrap_or("invalid policy").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop a leading "line L column C: ": the location is reported separately.
    match first.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("line ") && prefix.contains(" column ") => rest.to_string(),
        _ => first.to_string(),
    }
}
