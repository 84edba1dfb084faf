//! Command-line interface: clap arguments, command dispatch, and the only
//! place that prints to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod build;
mod cache;
mod checks;
mod context;
mod fsck;
mod images;
mod interrupt;
mod progress;
mod registry;
mod report;
mod run;
mod store;

use anyhow::{Context, Result};
use args::{Cli, Command, DebugCommand};
use clap::Parser;
use estiba_frontend::Span;
use std::io::Read;
use std::path::Path;

/// Exit status when a build or command fails.
const EXIT_FAILED: i32 = 1;
/// Exit status for a usage error.
const EXIT_USAGE: i32 = 2;

/// Allocations from this size up are mapped and unmapped on their own.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// For the commands that compress layers: glibc's mmap threshold (128 KiB)
/// rises with every big block freed until megabyte buffers come from the
/// heap and stay resident after use, so a push compressing three layers
/// peaked at 78 MB; fixed, at 54 MB. The hot paths reuse their big
/// buffers, so few calls pay for the mapping; a pull, which gains nothing,
/// keeps the default (fixing it cost a pull 0.1 s of system time).
/// musl's allocator (the static build) always maps big blocks on their
/// own, and has no `mallopt`.
fn unmap_big_buffers() {
    // SAFETY: mallopt only sets an allocator parameter, under glibc's
    // own lock; a failure (0) leaves the default, which is only slower
    // to give memory back.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Memory glibc keeps for reuse at the top of a heap once freed, instead
/// of giving it back to the kernel. Its default (128 KiB, raised only by
/// freeing big mapped blocks) gave back and faulted in again the pieces a
/// push streams (256 KiB, made on one thread and freed on another): on a
/// VM whose host reclaims freed memory each page is then a host fault. A
/// first push of 504 MiB spent 0.51-0.61 s in the kernel with the default,
/// 0.32-0.47 s with this, 0.07 s less in all (alternating runs); its peak
/// RSS went from 44-47 MB to 45-51 MB.
#[cfg(target_env = "gnu")]
const KEPT_FREE_MEMORY: libc::c_int = 64 << 20;

/// For every command, before any thread starts: see [`KEPT_FREE_MEMORY`].
fn keep_freed_memory() {
    // SAFETY: mallopt only sets an allocator parameter, under glibc's
    // own lock; a failure (0) leaves the default.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_FREE_MEMORY);
    }
}

/// Runs the CLI and returns the process exit code.
pub(crate) fn main() -> i32 {
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(line) = unsupported_flag(&e) {
                eprintln!("{line}");
                return EXIT_USAGE;
            }
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    // Before any thread starts (the interrupt thread is the first).
    if let Err(e) = estiba::rootless::enter() {
        return Failure::Other(e.into()).report(cli.debug);
    }
    interrupt::install();
    if matches!(
        cli.command,
        Command::Build(_) | Command::Push(_) | Command::Save { .. }
    ) {
        unmap_big_buffers();
    }
    let root = cli.root.as_deref();
    let outcome = match &cli.command {
        Command::Build(args) => build::build(args, root),
        Command::Images {
            format,
            filters,
            quiet,
        } => images::images(root, *format, filters, *quiet),
        Command::History {
            no_trunc,
            format,
            name,
        } => images::history(root, name, *format, *no_trunc),
        Command::System {
            command: args::SystemCommand::Df,
        } => images::system_df(root),
        Command::Inspect { name } => images::inspect(root, name),
        Command::Tag { source, target } => images::tag(root, source, target),
        Command::Rmi { names } => images::rmi(root, names),
        Command::Prune { all } => images::prune(root, *all),
        Command::Fsck { repair, full } => fsck::fsck(root, *repair, *full),
        Command::Load { input } => images::load(root, input),
        Command::Import { file, name } => images::import(root, file, name),
        Command::Save {
            output,
            format,
            names,
        } => images::save(root, output, *format, names),
        Command::Run(args) => run::run(args, root),
        Command::Pull {
            platform,
            quiet,
            name,
        } => registry::pull(root, name, platform.as_deref(), *quiet),
        Command::Push(args) => registry::push(root, args),
        Command::Login {
            username,
            password,
            password_stdin,
            server,
        } => registry::login(
            server.as_deref(),
            username.as_deref(),
            password.as_deref(),
            *password_stdin,
        ),
        Command::Logout { server } => registry::logout(server.as_deref()),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "estiba", &mut std::io::stdout());
            Ok(())
        }
        Command::Debug {
            command: DebugCommand::Parse { dockerfile },
        } => debug_parse(dockerfile),
    };
    match outcome {
        Ok(()) => 0,
        Err(failure) => failure.report(cli.debug),
    }
}

/// One line for a flag the command does not have, as a user coming from
/// `docker build` meets them: "estiba build does not support --squash".
/// clap's own message would suggest `-- --squash`, which is wrong advice
/// for a flag. Other usage errors keep clap's message.
fn unsupported_flag(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else {
        return None;
    };
    if !arg.starts_with('-') {
        return None;
    }
    let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
    let command = <Cli as clap::CommandFactory>::command();
    let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
    let sub = std::env::args()
        .skip(1)
        .find(|a| names.contains(&a.as_str()))
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    Some(format!("error: estiba{sub} does not support {flag}"))
}

/// A command's failure: a usage problem, an error at a Dockerfile line (with
/// the Dockerfile's text to show), or anything else with its cause chain.
pub(crate) enum Failure {
    Usage(String),
    Dockerfile {
        error: Box<dyn std::error::Error + Send + Sync>,
        span: Option<Span>,
        source: String,
    },
    /// The command has already printed why it fails (`build --check` with
    /// warnings): exit 1, print nothing more.
    Reported,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<estiba_cache::StoreError> for Failure {
    fn from(e: estiba_cache::StoreError) -> Self {
        Failure::Other(e.into())
    }
}

impl Failure {
    /// A frontend error at its Dockerfile line, `source` being the text.
    fn frontend(error: estiba_frontend::Error, source: &str) -> Self {
        Failure::Dockerfile {
            span: error.span().cloned(),
            error: Box::new(error),
            source: source.to_string(),
        }
    }

    /// Prints the failure; with `--debug`, also its full structure.
    fn report(self, debug: bool) -> i32 {
        if debug {
            match &self {
                Failure::Usage(_) | Failure::Reported => {}
                Failure::Dockerfile { error, .. } => eprintln!("debug: {error:#?}"),
                Failure::Other(e) => eprintln!("debug: {e:#?}"),
            }
        }
        match self {
            Failure::Usage(msg) => {
                eprintln!("error: {msg}");
                EXIT_USAGE
            }
            Failure::Dockerfile {
                error,
                span,
                source,
            } => {
                eprint!(
                    "{}",
                    report::render_at(error.as_ref(), span.as_ref(), &source)
                );
                EXIT_FAILED
            }
            Failure::Reported => EXIT_FAILED,
            Failure::Other(e) => {
                eprint!("{}", report::render_chain(&e));
                EXIT_FAILED
            }
        }
    }
}

/// Reads a Dockerfile from a path, or standard input for `-`.
pub(crate) fn read_dockerfile(path: &Path) -> Result<String> {
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
            span: Some(e.span.clone()),
            error: Box::new(e),
            source: text,
        }),
    }
}
