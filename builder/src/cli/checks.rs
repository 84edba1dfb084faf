//! Build checks in the CLI: `estiba build --check` prints BuildKit's lint
//! report and exits 1 when it has warnings (as `docker build --check` does:
//! buildx takes the exit status from the lint result's
//! `result.statuscode`, 1 with warnings, moby/buildkit
//! frontend/subrequests/lint/lint.go); a build prints the one-line summary
//! after its result, and fails before running anything under
//! `# check=error=true`.

use super::args::BuildArgs;
use super::Failure;
use estiba::context::BuildContext;
use estiba::image::{Images, PullPolicy};
use estiba::progress::Silent;
use estiba_frontend::checks::{self, CheckOptions, Finding, Report};
use estiba_frontend::dockerignore::Matcher;
use estiba_frontend::{plan, BaseResolver, BuildGraph, PlanOptions};
use std::fmt::Write;
use std::path::Path;

/// Runs the checks on every stage (those `--target` needs, when given) and
/// prints the report, as `docker build --check`: nothing is built. Exit 1
/// when something was found.
pub(crate) fn check_only(
    args: &BuildArgs,
    source: &super::context::Source,
    opts: &PlanOptions,
    root: Option<&Path>,
) -> Result<(), Failure> {
    let text = source.text.as_str();
    let named = source.named.as_path();
    let context = BuildContext::open(&source.dir, Some(named), None).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "cannot use the build context {}",
            args.context.display()
        ))
    })?;
    let store = super::store::open(root)?;
    let _lock = store.lock_shared()?;
    let registry = super::registry::open()?;
    let images = Images::with_registry(&store, &registry, PullPolicy::Missing, &Silent);
    // All stages, unless --target names one: then the stages it needs
    // (BuildKit's lint sets AllStages only without a target).
    let needed: Option<Vec<bool>> = match &opts.target {
        None => None,
        Some(_) => {
            let graph = plan(text, opts, &images).map_err(|e| Failure::frontend(e, text))?;
            Some(graph.stages.iter().map(|s| s.needed).collect())
        }
    };
    let report = run(
        text,
        opts,
        needed.as_deref(),
        &images,
        context.ignore_matcher(),
    )?;
    print!("{}", full_report(&report, text));
    if let Some(violation) = report.violation() {
        println!();
        return Err(Failure::Other(anyhow::anyhow!(violation)));
    }
    if report.findings.is_empty() {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

/// The checks a build runs: the stages its plan needs. Under
/// `check=error=true` with findings, the summary is printed and the build
/// fails here, before anything runs.
pub(crate) fn before_build(
    text: &str,
    opts: &PlanOptions,
    graph: &BuildGraph,
    resolver: &dyn BaseResolver,
    ignore: &Matcher,
) -> Result<Report, Failure> {
    let needed: Vec<bool> = graph.stages.iter().map(|s| s.needed).collect();
    let report = run(text, opts, Some(&needed), resolver, ignore)?;
    if let Some(violation) = report.violation() {
        eprint!("{}", summary(&report));
        return Err(Failure::Other(anyhow::anyhow!(violation)));
    }
    Ok(report)
}

/// Prints a build's findings after its result, BuildKit's way.
pub(crate) fn after_build(report: &Report) {
    eprint!("{}", summary(report));
}

fn run(
    text: &str,
    opts: &PlanOptions,
    stages: Option<&[bool]>,
    resolver: &dyn BaseResolver,
    ignore: &Matcher,
) -> Result<Report, Failure> {
    let check_opts = CheckOptions {
        plan: opts,
        ignore: Some(ignore),
        stages,
    };
    checks::check(text, &check_opts, resolver).map_err(|e| Failure::frontend(e, text))
}

/// buildx's summary after a build (`printWarnings`): a blank line, ` N
/// warnings found (…):`, then ` - Rule: message (line N)` per finding. The
/// advice points at `--check`, estiba's expanded form.
fn summary(report: &Report) -> String {
    let mut out = String::new();
    let n = report.findings.len();
    if n == 0 {
        return out;
    }
    let count = if n == 1 {
        "1 warning found".to_string()
    } else {
        format!("{n} warnings found")
    };
    let _ = writeln!(out, "\n {count} (use estiba build --check to expand):");
    for finding in &report.findings {
        let _ = writeln!(out, " - {}", finding.short());
    }
    out
}

/// buildx's `--check` output: `Check complete, …`, then per finding the
/// rule, its URL, the message and the Dockerfile lines around it.
fn full_report(report: &Report, text: &str) -> String {
    let mut out = String::new();
    match report.findings.len() {
        0 => {
            let _ = writeln!(out, "Check complete, no warnings found.");
            return out;
        }
        1 => out.push_str("Check complete, 1 warning has been found!\n"),
        n => {
            let _ = writeln!(out, "Check complete, {n} warnings have been found!");
        }
    }
    for finding in &report.findings {
        let _ = write!(
            out,
            "\nWARNING: {} - {}\n{}\n",
            finding.rule.name, finding.rule.url, finding.message
        );
        out.push_str(&source_lines(finding, text));
    }
    out
}

/// The lines around a finding as BuildKit prints a source range
/// (moby/buildkit solver/errdefs/source.go `Source.Print`): up to four
/// lines of context around a one-line range, two around a longer one.
fn source_lines(finding: &Finding, text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let (first, last) = (
        finding.span.line,
        finding.span.end_line.max(finding.span.line),
    );
    if first < 1 || first > lines.len() {
        return String::new();
    }
    let (mut start, mut end) = (first, last.min(lines.len()));
    let pad = if start == end { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != lines.len() {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let mut out = format!("{}:{first}\n--------------------\n", finding.span.file);
    for (i, line) in lines.iter().enumerate().take(end).skip(start - 1) {
        let n = i + 1;
        let mark = if (first..=last).contains(&n) {
            ">>>"
        } else {
            "   "
        };
        let _ = writeln!(out, " {n:>3} | {mark} {line}");
    }
    out.push_str("--------------------\n");
    out
}
