//! Error messages for people: the Dockerfile lines around an error with a
//! marker, then the chain of causes.

use std::fmt::Write;

/// How many lines of context to show around the failing lines.
const CONTEXT_LINES: usize = 2;

/// `error: …`, ` --> file:line:col`, the source excerpt, `caused by:` lines.
pub(crate) fn render_at(
    error: &(dyn std::error::Error + 'static),
    span: Option<&estiba_frontend::Span>,
    source: &str,
) -> String {
    let mut out = format!("error: {error}\n");
    if let Some(span) = span {
        let _ = writeln!(out, " --> {span}");
        out.push_str(&excerpt(source, span.line, span.end_line, span.column));
    }
    let mut cause = error.source();
    while let Some(e) = cause {
        let _ = writeln!(out, "caused by: {e}");
        cause = e.source();
    }
    out
}

/// The lines `first..=last` (1-based) with some context and a `>` marker on
/// the lines at fault, or a caret under the column for a one-line span.
pub(crate) fn excerpt(source: &str, first: usize, last: usize, column: usize) -> String {
    let lines: Vec<&str> = source.lines().collect();
    if first == 0 || first > lines.len() {
        return String::new();
    }
    let last = last.clamp(first, lines.len());
    let from = first.saturating_sub(CONTEXT_LINES).max(1);
    let to = (last + CONTEXT_LINES).min(lines.len());
    let width = to.to_string().len();
    let mut out = String::new();
    for n in from..=to {
        let at_fault = (first..=last).contains(&n);
        let mark = if at_fault { '>' } else { ' ' };
        let _ = writeln!(out, "{mark} {n:>width$} | {}", lines[n - 1]);
        if at_fault && first == last {
            let line = lines[n - 1];
            let start = column.saturating_sub(1).min(line.len());
            let word = line[start..]
                .split_whitespace()
                .next()
                .map_or(1, |w| w.chars().count());
            let _ = writeln!(
                out,
                "  {:>width$} | {}{}",
                "",
                " ".repeat(line[..start].chars().count()),
                "^".repeat(word.max(1))
            );
        }
    }
    out
}

/// `error: …` and one `caused by:` line per cause.
pub(crate) fn render_chain(error: &anyhow::Error) -> String {
    let mut out = format!("error: {error}\n");
    for cause in error.chain().skip(1) {
        let _ = writeln!(out, "caused by: {cause}");
    }
    out
}
