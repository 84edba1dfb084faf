//! The command line, as clap reads it. Flags follow `docker build` where
//! docker has them.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// estiba: build container images from Dockerfiles, without a daemon.
#[derive(Debug, Parser)]
#[command(name = "estiba", version, about)]
pub(crate) struct Cli {
    /// Store directory (default: $ESTIBA_ROOT, then /var/lib/estiba for root).
    #[arg(long, global = true, env = "ESTIBA_ROOT")]
    pub(crate) root: Option<PathBuf>,
    /// Print debug detail on errors.
    #[arg(long, global = true)]
    pub(crate) debug: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Build an image from a Dockerfile.
    Build(BuildArgs),
    /// Tools for looking inside estiba.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Print a Dockerfile's AST in BuildKit's dump format.
    Parse {
        /// The Dockerfile (`-` for standard input).
        dockerfile: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` for standard input).
    #[arg(short = 'f', long = "file")]
    pub(crate) file: Option<PathBuf>,
    /// Name and tag for the image (name:tag).
    #[arg(short = 't', long = "tag")]
    pub(crate) tags: Vec<String>,
    /// A build argument, K=V, or K to take its value from the environment.
    #[arg(long = "build-arg")]
    pub(crate) build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// The platform to build for (os/arch[/variant]).
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// A label for the image, K=V.
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// Plan only: print stages, steps, dependencies and what is pruned.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub(crate) format: PlanFormat,
    /// The build context directory.
    pub(crate) context: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PlanFormat {
    Text,
    Json,
}
