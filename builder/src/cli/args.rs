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
    Build(Box<BuildArgs>),
    /// List the images in the store.
    Images {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Only images that match: dangling=true|false, reference=PATTERN
        /// (a glob on name or name:tag); repeatable, as docker's.
        #[arg(short = 'f', long = "filter")]
        filters: Vec<String>,
        /// Print only image IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show the steps an image was built by, newest first.
    History {
        /// Do not cut the command lines.
        #[arg(long)]
        no_trunc: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// The image (name or ID).
        name: String,
    },
    /// Store-wide commands.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Show an image's config and layers as JSON.
    Inspect {
        /// The image.
        name: String,
    },
    /// Give an image another name.
    Tag {
        /// The image.
        source: String,
        /// The new name.
        target: String,
    },
    /// Remove image names (the layers go with `estiba prune`).
    Rmi {
        /// The images.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Free space: images without a name (dangling) and unreferenced
    /// layers; with --all, the build cache too.
    Prune {
        /// Also drop the build cache and snapshots.
        #[arg(long)]
        all: bool,
    },
    /// Check the store: every blob against its digest, tags and the build
    /// cache against the blobs, snapshots against their layers.
    Fsck {
        /// Drop what is broken (the next build makes it again).
        #[arg(long)]
        repair: bool,
        /// Also unpack every layer that has a snapshot again and compare
        /// the two trees (as long as unpacking the whole store takes).
        #[arg(long)]
        full: bool,
    },
    /// Load images from a `docker save` archive or an OCI archive.
    Load {
        /// The archive (`-` for standard input).
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
    },
    /// Make a one-layer image from a root filesystem tarball.
    Import {
        /// The tarball (plain, gzip, bzip2, xz or zstd).
        file: PathBuf,
        /// The image name.
        name: String,
    },
    /// Write images to an archive.
    Save {
        /// The archive to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// docker (`docker load` reads it) or oci.
        #[arg(long, value_enum, default_value_t = ArchiveFormat::Docker)]
        format: ArchiveFormat,
        /// The images.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command in a container of an image, in the foreground (the
    /// container is removed when it ends).
    Run(RunArgs),
    /// Pull an image from a registry into the store.
    Pull {
        /// The platform to pull for (os/arch[/variant]; default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// Print only the image name.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// The image (`node:14`, `ghcr.io/org/app@sha256:…`).
        name: String,
    },
    /// Push an image (by name or ID) to a registry, as DEST if given.
    Push(PushArgs),
    /// Log in to a registry: the credentials go to ~/.docker/config.json
    /// (or its credential helper), as `docker login` writes them.
    Login {
        /// The user name.
        #[arg(short = 'u', long)]
        username: Option<String>,
        /// The password (prefer --password-stdin: arguments are visible to
        /// other users).
        #[arg(short = 'p', long)]
        password: Option<String>,
        /// Read the password (or token) from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The registry (default: Docker Hub).
        server: Option<String>,
    },
    /// Remove a registry's credentials.
    Logout {
        /// The registry (default: Docker Hub).
        server: Option<String>,
    },
    /// Print a shell completion script: `source <(estiba completion bash)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Tools for looking inside estiba.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SystemCommand {
    /// Show what the store's images, layers, snapshots and caches take on disk.
    Df,
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
pub(crate) struct PushArgs {
    /// Media types of the pushed manifest: oci or docker (schema 2).
    #[arg(long, value_enum, default_value_t = ManifestFormat::Oci)]
    pub(crate) format: ManifestFormat,
    /// Compression of layers the store holds uncompressed.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub(crate) compression: CompressionArg,
    /// Its level: gzip 0-9 (default 2, libdeflate's: about the size zlib's 6 writes),
    /// zstd 1-22 (default 3; 0 is 3).
    #[arg(long, value_name = "N")]
    pub(crate) compression_level: Option<u32>,
    /// Progress output: auto, plain, tty or quiet.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Write the pushed digest and name as JSON (buildx's keys).
    #[arg(long)]
    pub(crate) metadata_file: Option<PathBuf>,
    /// Print only the pushed manifest's digest.
    #[arg(short = 'q', long)]
    pub(crate) quiet: bool,
    /// The image in the store.
    pub(crate) name: String,
    /// Where to push it (default: its own name).
    pub(crate) dest: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum ManifestFormat {
    Oci,
    Docker,
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
    /// The platform to build for (os/arch[/variant], or `local` for this
    /// machine's); one only: multi-platform builds are not supported yet.
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// A label for the image, K=V.
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// Run every step, ignoring the build cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// A secret for `RUN --mount=type=secret`: id=ID,src=PATH or id=ID,env=VAR
    /// (`type=file|env` optional). It never reaches the image or the cache.
    #[arg(long = "secret")]
    pub(crate) secrets: Vec<String>,
    /// The network of RUN steps without their own `--network`: default (a
    /// private namespace with outbound connections through pasta, as
    /// `docker build`'s), host, or none (only lo).
    #[arg(long, value_enum, default_value_t = BuildNetwork::Default)]
    pub(crate) network: BuildNetwork,
    /// Allow what steps may only do when allowed (BuildKit's
    /// entitlements): security.insecure for `RUN --security=insecure`,
    /// network.host for `RUN --network=host`.
    #[arg(long = "allow", value_enum)]
    pub(crate) allow: Vec<AllowArg>,
    /// Progress output: auto, plain, tty or quiet.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Where the result goes: type=image (default), type=oci,dest=F.tar,
    /// type=docker,dest=F.tar, type=local,dest=DIR,
    /// type=registry[,name=REF] (push), type=image,push=true; oci, image
    /// and registry take compression=gzip|zstd and compression-level=N.
    #[arg(short = 'o', long = "output")]
    pub(crate) outputs: Vec<String>,
    /// Write the image ID to this file.
    #[arg(long)]
    pub(crate) iidfile: Option<PathBuf>,
    /// Push the image to its registry under every -t name (as
    /// `--output type=registry`).
    #[arg(long)]
    pub(crate) push: bool,
    /// Ask the registry for newer versions of base images, even those in
    /// the store.
    #[arg(long)]
    pub(crate) pull: bool,
    /// Media types of pushed manifests: oci or docker (schema 2).
    #[arg(long = "push-format", value_enum, default_value_t = ManifestFormat::Oci)]
    pub(crate) push_format: ManifestFormat,
    /// Export the build cache: type=registry,ref=REF[,mode=min|max][,compression=gzip|zstd]
    /// [,compression-level=N],
    /// type=local,dest=DIR[,mode=…], or type=inline (in the pushed image).
    #[arg(long = "cache-to")]
    pub(crate) cache_to: Vec<String>,
    /// Use a build cache: type=registry,ref=REF, type=local,src=DIR, or REF
    /// (a cache or an image with an inline cache); repeatable, first wins.
    #[arg(long = "cache-from")]
    pub(crate) cache_from: Vec<String>,
    /// Write the build's result as JSON (buildx's keys: containerimage.digest,
    /// containerimage.config.digest, image.name).
    #[arg(long)]
    pub(crate) metadata_file: Option<PathBuf>,
    /// Print only the image ID.
    #[arg(short = 'q', long)]
    pub(crate) quiet: bool,
    /// Layer compression in OCI archives and pushes (an output's
    /// compression= says otherwise for it).
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub(crate) compression: CompressionArg,
    /// A named context, NAME=DIR or NAME=docker-image://REF, that `FROM
    /// NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME` read in place
    /// of an image named NAME (repeatable).
    #[arg(long = "build-context")]
    pub(crate) build_contexts: Vec<String>,
    /// A line for /etc/hosts of RUN steps, HOST:IP (docker's `--add-host`;
    /// `host-gateway` is not supported: there is no daemon bridge).
    #[arg(long = "add-host")]
    pub(crate) add_hosts: Vec<String>,
    /// Size of RUN steps' /dev/shm, like 64m or 1g (default 64m).
    #[arg(long = "shm-size")]
    pub(crate) shm_size: Option<String>,
    /// A resource limit of RUN steps, NAME=SOFT[:HARD] (nofile=1024:2048).
    #[arg(long = "ulimit")]
    pub(crate) ulimits: Vec<String>,
    /// How RUN steps are kept from the host: `default` (a build container
    /// with its own namespaces) or `chroot` (no namespaces at all, for
    /// containers that refuse them; weaker isolation, see the README).
    #[arg(long, env = "ESTIBA_ISOLATION", default_value = "default")]
    pub(crate) isolation: String,
    /// Run every step of this stage without the build cache (repeatable).
    #[arg(long = "no-cache-filter", value_delimiter = ',')]
    pub(crate) no_cache_filter: Vec<String>,
    /// buildx's --load: the image goes to the store, which is estiba's
    /// default (accepted so buildx scripts run as they are).
    #[arg(long)]
    pub(crate) load: bool,
    /// buildx's provenance attestation: only `false` (or `0`) is accepted;
    /// estiba makes no attestations.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) provenance: Option<String>,
    /// buildx's SBOM attestation: only `false` (or `0`) is accepted.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) sbom: Option<String>,
    /// Accepted for docker's sake: build containers are always removed.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) rm: Vec<String>,
    /// Accepted for docker's sake: build containers are always removed.
    #[arg(long = "force-rm", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) force_rm: Vec<String>,
    /// Its level: gzip 0-9 (default 2, libdeflate's: about the size zlib's 6 writes),
    /// zstd 1-22 (default 3; 0 is 3); an output's
    /// compression-level= says otherwise for it.
    #[arg(long, value_name = "N")]
    pub(crate) compression_level: Option<u32>,
    /// Plan only: print stages, steps, dependencies and what is pruned.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Run BuildKit's build checks (Dockerfile lint rules) on every stage,
    /// print them and exit 1 if any warns; nothing is built.
    #[arg(long)]
    pub(crate) check: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub(crate) format: PlanFormat,
    /// The build context directory.
    pub(crate) context: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum BuildNetwork {
    Default,
    Host,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum AllowArg {
    #[value(name = "security.insecure")]
    SecurityInsecure,
    #[value(name = "network.host")]
    NetworkHost,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PlanFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum ArchiveFormat {
    Docker,
    Oci,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum ProgressMode {
    Auto,
    Plain,
    Tty,
    Quiet,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Remove the container when it exits (always done; accepted for docker compatibility).
    #[arg(long)]
    pub(crate) rm: bool,
    /// default (a private network namespace with outbound connections, as
    /// docker's bridge), host, or none (only lo).
    #[arg(long, default_value = "default")]
    pub(crate) network: String,
    /// Set an environment variable, K=V (or K to take it from your environment).
    #[arg(short = 'e', long = "env")]
    pub(crate) env: Vec<String>,
    /// Publish a container port on the host, [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]
    /// (default network only).
    #[arg(short = 'p', long = "publish")]
    pub(crate) publish: Vec<String>,
    /// Bind a host directory or file, SRC:DST[:ro].
    #[arg(short = 'v', long = "volume")]
    pub(crate) volumes: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub(crate) workdir: Option<String>,
    /// User (name or uid, with an optional :group).
    #[arg(short = 'u', long = "user")]
    pub(crate) user: Option<String>,
    /// Keep standard input open and pass it to the command.
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Give the command a pseudo-terminal (with -i: an interactive shell).
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
    /// Run this instead of the image's ENTRYPOINT (its CMD is dropped too,
    /// as docker does; "" for none).
    #[arg(long)]
    pub(crate) entrypoint: Option<String>,
    /// The container's name, which is also its host name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Refused: estiba has no daemon to keep a container running.
    #[arg(short = 'd', long, hide = true)]
    pub(crate) detach: bool,
    /// The image.
    pub(crate) image: String,
    /// The command and its arguments (default: the image's ENTRYPOINT and CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
}
