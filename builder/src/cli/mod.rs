//! Command-line interface: clap arguments, command dispatch, and the only
//! place that prints to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod report;

use anyhow::{Context, Result};
use args::{BuildArgs, Cli, Command, DebugCommand, PlanFormat};
use clap::Parser;
use estiba_frontend::{dockerignore, plan, NoImages, PlanOptions, Platform};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Exit status when a build or command fails.
const EXIT_FAILED: i32 = 1;
/// Exit status for a usage error.
const EXIT_USAGE: i32 = 2;

/// Runs the CLI and returns the process exit code.
pub(crate) fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let outcome = match cli.command {
        Command::Build(args) => build(&args),
        Command::Debug {
            command: DebugCommand::Parse { dockerfile },
        } => debug_parse(&dockerfile),
    };
    match outcome {
        Ok(()) => 0,
        Err(failure) => failure.report(),
    }
}

/// A command's failure: a usage problem, a Dockerfile error with its source,
/// or anything else with its cause chain.
pub(crate) enum Failure {
    Usage(String),
    Dockerfile {
        error: estiba_frontend::Error,
        source: String,
    },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl Failure {
    fn report(self) -> i32 {
        match self {
            Failure::Usage(msg) => {
                eprintln!("error: {msg}");
                EXIT_USAGE
            }
            Failure::Dockerfile { error, source } => {
                eprint!("{}", report::render_frontend_error(&error, &source));
                EXIT_FAILED
            }
            Failure::Other(e) => {
                eprint!("{}", report::render_chain(&e));
                EXIT_FAILED
            }
        }
    }
}

/// Reads a Dockerfile from a path, or standard input for `-`.
fn read_dockerfile(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the Dockerfile from standard input")?;
        return Ok(text);
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read Dockerfile {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn debug_parse(path: &Path) -> Result<(), Failure> {
    let text = read_dockerfile(path)?;
    let name = path.display().to_string();
    match estiba_frontend::parser::parse(&name, &text) {
        Ok(parsed) => {
            print!("{}", parsed.dump());
            Ok(())
        }
        Err(e) => Err(Failure::Dockerfile {
            error: e.into(),
            source: text,
        }),
    }
}

/// The Dockerfile a build uses: `-f` as given, else `CONTEXT/Dockerfile`.
fn dockerfile_path(args: &BuildArgs) -> PathBuf {
    match &args.file {
        Some(f) => f.clone(),
        None => args.context.join("Dockerfile"),
    }
}

/// `--build-arg K=V`, and `--build-arg K` from the environment (skipped when
/// K is not set there, as docker does).
fn build_args(args: &BuildArgs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(arg) {
                    out.insert(arg.clone(), v);
                }
            }
        }
    }
    out
}

fn build(args: &BuildArgs) -> Result<(), Failure> {
    if !args.dry_run {
        return Err(Failure::Usage(
            "this estiba can plan a build but not yet execute one: add --dry-run to print the plan"
                .to_string(),
        ));
    }
    let path = dockerfile_path(args);
    let text = read_dockerfile(&path)?;
    let mut opts = PlanOptions::new(&path.display().to_string());
    opts.build_args = build_args(args);
    opts.target = args.target.clone();
    if let Some(p) = &args.platform {
        opts.platform = Platform::parse(p).ok_or_else(|| {
            Failure::Usage(format!(
                "invalid --platform {p:?}: expected os/arch[/variant]"
            ))
        })?;
    }
    for label in &args.labels {
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        opts.labels.insert(k.to_string(), v.to_string());
    }
    let graph = plan(&text, &opts, &NoImages).map_err(|error| Failure::Dockerfile {
        error,
        source: text.clone(),
    })?;
    let ignore = ignore_file(&args.context, &path)?;
    match args.format {
        PlanFormat::Json => {
            let json = serde_json::to_string_pretty(&graph).context("cannot serialize the plan")?;
            println!("{json}");
        }
        PlanFormat::Text => {
            println!("dockerfile: {}", path.display());
            println!("context: {}", args.context.display());
            match &ignore {
                Some((file, patterns)) => println!(
                    "ignore file: {} ({} patterns)",
                    file.display(),
                    patterns.len()
                ),
                None => println!("ignore file: none"),
            }
            for tag in &args.tags {
                println!("tag: {tag}");
            }
            print!("{}", graph.render());
        }
    }
    for w in &graph.warnings {
        match &w.span {
            Some(span) => eprintln!("warning: {span}: {}", w.message),
            None => eprintln!("warning: {}", w.message),
        }
    }
    Ok(())
}

/// The `.dockerignore` that applies and its patterns, checked for validity.
fn ignore_file(context: &Path, dockerfile: &Path) -> Result<Option<(PathBuf, Vec<String>)>> {
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for candidate in dockerignore::ignore_file_candidates(&name) {
        let beside = dockerfile.with_file_name(&candidate);
        let path = if candidate == ".dockerignore" {
            context.join(&candidate)
        } else {
            beside
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let patterns = dockerignore::parse_ignore_file(&text);
        dockerignore::Matcher::new(&patterns)
            .with_context(|| format!("invalid pattern in {}", path.display()))?;
        return Ok(Some((path, patterns)));
    }
    Ok(None)
}
