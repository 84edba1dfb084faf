//! `estiba pull`, `push`, `login` and `logout`, and the registry client
//! every command that reaches a registry shares.

use super::args::{CompressionArg, ManifestFormat, ProgressMode, PushArgs};
use super::progress::{Plain, Tty};
use super::Failure;
use anyhow::{anyhow, Context};
use estiba::compress::{Codec, Compression};
use estiba::image::{Format, Images, PullPolicy, PushOptions, Pushed};
use estiba::registry::{credentials, Reference, Registry, RegistryOptions};
use std::io::Read;
use std::path::Path;

/// Docker Hub, as `docker login` names it when no server is given.
const DOCKER_HUB: &str = "docker.io";

/// Overrides docker's `/etc/docker/certs.d` (per-registry CAs and client
/// certificates), for tests and for users without access to `/etc`.
const CERTS_DIR_ENV: &str = "ESTIBA_CERTS_DIR";

/// The registry client, configured as DESIGN.md says: docker's credentials
/// (`$DOCKER_CONFIG` or `~/.docker`), docker's certs.d, estiba's registries
/// config (`$ESTIBA_REGISTRIES_CONFIG` or its default path).
pub(crate) fn open() -> Result<Registry, Failure> {
    let mut opts = RegistryOptions::default();
    if let Some(dir) = std::env::var_os(CERTS_DIR_ENV).filter(|d| !d.is_empty()) {
        opts.certs_dir = dir.into();
    }
    Registry::new(opts).map_err(|e| Failure::Other(anyhow::Error::new(e)))
}

/// Where `login` and `logout` keep credentials: docker's config directory.
fn credentials_dir() -> Result<std::path::PathBuf, Failure> {
    RegistryOptions::default()
        .docker_config_dir()
        .map_err(|e| Failure::Other(anyhow::Error::new(e)))
}

pub(crate) fn compression(arg: CompressionArg) -> Compression {
    match arg {
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Zstd => Compression::Zstd,
    }
}

/// `--compression` at `--compression-level`.
pub(crate) fn codec(arg: CompressionArg, level: Option<u32>) -> Result<Codec, Failure> {
    estiba::compress::codec(compression(arg), level)
        .map_err(|e| Failure::Usage(format!("--compression-level: {e}")))
}

/// The compression fields of buildx's exporters and cache exporters,
/// `compression=gzip|zstd` and `compression-level=N`; what a spec leaves
/// out comes from `--compression` and `--compression-level`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompressionFields {
    compression: Option<Compression>,
    level: Option<u32>,
}

impl CompressionFields {
    /// Takes field `key=value` if it is one of these (`Ok(true)`); the
    /// error says what a bad value should be.
    pub(crate) fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "compression" => {
                self.compression = Some(match value {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    _ => return Err("compression is gzip or zstd".to_string()),
                });
            }
            "compression-level" => {
                self.level = Some(
                    value
                        .parse()
                        .map_err(|_| "compression-level is a whole number".to_string())?,
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the spec gave either field.
    pub(crate) fn given(self) -> bool {
        self.compression.is_some() || self.level.is_some()
    }

    /// The codec these fields ask for over `default` (the flags'), or why
    /// not: a field not given is `default`'s, except that another
    /// compression without a level takes its own default level.
    pub(crate) fn codec(self, default: Codec) -> Result<Codec, String> {
        let compression = self.compression.unwrap_or(default.compression);
        let level = self
            .level
            .or((compression == default.compression).then_some(default.level));
        estiba::compress::codec(compression, level).map_err(|e| e.to_string())
    }
}

pub(crate) fn format(arg: ManifestFormat) -> Format {
    match arg {
        ManifestFormat::Oci => Format::Oci,
        ManifestFormat::Docker => Format::Docker,
    }
}

/// `estiba pull NAME`: asks the registry even when the store has the tag
/// (docker pull's policy), and downloads only the layers the store lacks.
pub(crate) fn pull(
    root: Option<&Path>,
    name: &str,
    platform: Option<&str>,
    quiet: bool,
) -> Result<(), Failure> {
    let reference = Reference::parse(name).map_err(|e| Failure::Usage(e.to_string()))?;
    let platform = match platform {
        Some(p) => super::build::platform_flag(p)?,
        None => estiba_frontend::Platform::host(),
    };
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let registry = open()?;
    let plain = Plain::new();
    let tty = Tty::new("Pulling");
    let shown = super::progress::chosen(ProgressMode::Auto, quiet, &plain, &tty);
    let tracked = super::interrupt::Tracked(shown);
    let images = Images::with_registry(&store, &registry, PullPolicy::Always, &tracked);
    let image = images
        .get(&reference.to_string(), &platform)
        .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
    tty.finish();
    if !quiet {
        println!("Digest: {}", image.descriptor.digest);
    }
    println!("{reference}");
    Ok(())
}

/// `estiba push NAME [DEST]`.
pub(crate) fn push(root: Option<&Path>, args: &PushArgs) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let (found_as, image) = super::images::find(&store, &args.name)?;
    let dest = match (&args.dest, found_as) {
        (Some(d), _) => Reference::parse(d).map_err(|e| Failure::Usage(e.to_string()))?,
        (None, Some(r)) => r,
        (None, None) => {
            return Err(Failure::Usage(format!(
                "{} is an image ID: say where to push it, `estiba push {} NAME[:TAG]`",
                args.name, args.name
            )))
        }
    };
    let registry = open()?;
    let plain = Plain::new();
    let tty = Tty::new("Pushing");
    let shown = super::progress::chosen(args.progress, args.quiet, &plain, &tty);
    let tracked = super::interrupt::Tracked(shown);
    let images = Images::with_registry(&store, &registry, PullPolicy::Missing, &tracked);
    let opts = PushOptions {
        format: format(args.format),
        compression: codec(args.compression, args.compression_level)?,
    };
    let pushed = images
        .push(&image, &dest, &opts)
        .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
    tty.finish();
    if args.quiet {
        println!("{}", pushed.digest);
    } else {
        print_pushed(&pushed);
    }
    if let Some(f) = &args.metadata_file {
        write_metadata(f, &image.id(), &[pushed], &[])?;
    }
    Ok(())
}

/// docker push's last line.
pub(crate) fn print_pushed(pushed: &Pushed) {
    println!(
        "{}: digest: {} size: {}",
        pushed.reference.familiar(),
        pushed.digest,
        pushed.size
    );
}

/// `--metadata-file`: buildx's keys for what a build or push made.
pub(crate) fn write_metadata(
    file: &Path,
    config: &estiba_cache::Digest,
    pushed: &[Pushed],
    caches: &[(String, estiba_cache::Digest)],
) -> Result<(), Failure> {
    let mut out = serde_json::json!({
        "containerimage.config.digest": config.to_string(),
    });
    if let Some(first) = pushed.first() {
        out["containerimage.digest"] = serde_json::json!(first.digest.to_string());
        out["containerimage.descriptor"] = serde_json::json!({
            "mediaType": first.media_type,
            "digest": first.digest.to_string(),
            "size": first.size,
        });
        let names: Vec<String> = pushed.iter().map(|p| p.reference.to_string()).collect();
        out["image.name"] = serde_json::json!(names.join(","));
    }
    if !caches.is_empty() {
        // Not a buildx key: where each --cache-to went, and its manifest.
        out["estiba.cache.exported"] = caches
            .iter()
            .map(|(to, digest)| serde_json::json!({"ref": to, "digest": digest.to_string()}))
            .collect();
    }
    let text = serde_json::to_string_pretty(&out).context("cannot encode the metadata")?;
    std::fs::write(file, text).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

/// `estiba login`: checks the credentials against the registry, then
/// saves them where docker would.
pub(crate) fn login(
    server: Option<&str>,
    username: Option<&str>,
    password: Option<&str>,
    password_stdin: bool,
) -> Result<(), Failure> {
    let host = server.map_or(DOCKER_HUB, normalize_server);
    let username = match username {
        Some(u) => u.to_string(),
        None => return Err(Failure::Usage(
            "estiba login needs -u USER (and the password on standard input with --password-stdin)"
                .to_string(),
        )),
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => {
            return Err(Failure::Usage(
                "--password and --password-stdin are exclusive".to_string(),
            ))
        }
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p.to_string()
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the password from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => {
            return Err(Failure::Usage(
                "give the password on standard input with --password-stdin".to_string(),
            ))
        }
    };
    if password.is_empty() {
        return Err(Failure::Usage("the password is empty".to_string()));
    }
    let registry = open()?;
    registry
        .login(host, &username, &password)
        .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
    let dir = credentials_dir()?;
    credentials::store(&dir, host, &username, &password)
        .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
    eprintln!("Credentials saved in {}", dir.join("config.json").display());
    println!("Login Succeeded");
    Ok(())
}

/// `estiba logout`.
pub(crate) fn logout(server: Option<&str>) -> Result<(), Failure> {
    let host = server.map_or(DOCKER_HUB, normalize_server);
    let removed = credentials::erase(&credentials_dir()?, host)
        .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
    if removed {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(())
}

/// `https://ghcr.io/` → `ghcr.io`, as docker login accepts servers.
fn normalize_server(server: &str) -> &str {
    let s = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let s = s.trim_end_matches('/');
    match s {
        "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => DOCKER_HUB,
        other => other,
    }
}
