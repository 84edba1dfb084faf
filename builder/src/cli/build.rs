//! `estiba build`: plan, solve, store, export.

use super::args::{AllowArg, BuildArgs, BuildNetwork, PlanFormat};
use super::cache::{CacheTo, Mode as CacheMode};
use super::progress::Plain;
use super::registry::CompressionFields;
use super::Failure;
use anyhow::Context;
use estiba::compress::Codec;
use estiba::context::BuildContext;
use estiba::executor::{HostSettings, Isolation, Network, Ulimit, UlimitResource};
use estiba::image::{
    export_cache, inline_metadata, CacheDest, CacheEntry, CacheExportOptions, Images, PullPolicy,
    PushOptions, RemoteCache, INLINE_CACHE_KEY,
};
use estiba::progress::Reporter;
use estiba::registry::Reference;
use estiba::solve::{Entitlement, SecretSource, SolveOptions, Solver};
use estiba_frontend::{plan, NamedContext, NoImages, PlanOptions, Platform};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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

/// `--build-context NAME=VALUE` as buildx reads it: `docker-image://REF`,
/// or a local directory; BuildKit's other sources (git, https, oci-layout,
/// target:) are refused by name.
fn named_contexts(
    args: &BuildArgs,
) -> Result<BTreeMap<String, (NamedContext, Option<PathBuf>)>, Failure> {
    let mut out = BTreeMap::new();
    for spec in &args.build_contexts {
        let usage =
            |why: String| Failure::Usage(format!("invalid --build-context {spec:?}: {why}"));
        let (name, value) = spec
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| usage("expected NAME=DIR or NAME=docker-image://REF".to_string()))?;
        let entry = if let Some(reference) = value.strip_prefix("docker-image://") {
            Reference::parse(reference).map_err(|e| usage(e.to_string()))?;
            (NamedContext::Image(reference.to_string()), None)
        } else if let Some((scheme, _)) = value.split_once("://") {
            return Err(usage(format!(
                "{scheme}:// contexts are not supported; give a directory or docker-image://REF"
            )));
        } else if value.starts_with("target:") || value.starts_with("oci-layout:") {
            return Err(usage(
                "only directories and docker-image://REF are supported".to_string(),
            ));
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                return Err(usage(format!("{value} is not a directory")));
            }
            (NamedContext::Local, Some(dir))
        };
        out.insert(estiba_frontend::named_context_key(name), entry);
    }
    Ok(out)
}

fn plan_options(args: &BuildArgs, path: &Path) -> Result<PlanOptions, Failure> {
    let mut opts = PlanOptions::new(&path.display().to_string());
    opts.named_contexts = named_contexts(args)?
        .into_iter()
        .map(|(name, (context, _))| (name, context))
        .collect();
    opts.build_args = build_args(args);
    opts.target = args.target.clone();
    if let Some(p) = &args.platform {
        opts.platform = platform_flag(p)?;
    }
    for label in &args.labels {
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        opts.labels.insert(k.to_string(), v.to_string());
    }
    Ok(opts)
}

/// `--platform`: `os/arch[/variant]`, or `local` for this machine's, as
/// buildx reads it (`util/platformutil/parse.go`: `local` is
/// `platforms.DefaultSpec()`, anything else `platforms.Parse`). A comma
/// list asks for a multi-platform build, which estiba does not do yet.
pub(crate) fn platform_flag(text: &str) -> Result<Platform, Failure> {
    if text.trim().eq_ignore_ascii_case("local") {
        return Ok(Platform::host());
    }
    if text.contains(',') {
        return Err(Failure::Usage(format!(
            "invalid --platform {text:?}: multi-platform builds and pulls are not \
             supported yet; give one platform, like linux/amd64"
        )));
    }
    Platform::parse(text).map_err(|e| {
        Failure::Usage(format!(
            "invalid --platform: {e}; expected os/arch[/variant] or local"
        ))
    })
}

/// `--secret id=ID[,type=file|env][,src=PATH|,env=VAR]`, read as buildx
/// reads it: with neither `src` nor `env`, the variable ID if it is set,
/// else the file ID. A file must exist now; a variable is looked up when a
/// step mounts the secret (unset: the secret is missing).
fn parse_secret(spec: &str) -> Result<(String, SecretSource), Failure> {
    let usage = |why: String| Failure::Usage(format!("invalid --secret {spec:?}: {why}"));
    let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
    for field in spec.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(usage(format!("field {field:?} must be a key=value pair")));
        };
        match key.to_ascii_lowercase().as_str() {
            "id" => id = Some(value.to_string()),
            "type" if value == "file" || value == "env" => kind = Some(value.to_string()),
            "type" => return Err(usage(format!("unsupported secret type {value:?}"))),
            "src" | "source" => src = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            other => return Err(usage(format!("unexpected key {other:?}"))),
        }
    }
    let id = id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| usage("it needs id=ID".to_string()))?;
    if kind.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let source = match (src, env) {
        (Some(path), _) => SecretSource::File(PathBuf::from(path)),
        (None, Some(var)) => SecretSource::Env(var),
        (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None) => SecretSource::File(PathBuf::from(&id)),
    };
    if let SecretSource::File(path) = &source {
        std::fs::metadata(path)
            .with_context(|| format!("cannot use secret {id}: cannot stat {}", path.display()))?;
    }
    Ok((id, source))
}

/// Where a build's result goes.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    Image,
    /// Pushed to these names (none: the -t names).
    Registry {
        names: Vec<Reference>,
        codec: Codec,
    },
    Oci {
        dest: PathBuf,
        codec: Codec,
    },
    Docker(PathBuf),
    /// The root filesystem; device nodes only with `devices=true`.
    Local {
        dest: PathBuf,
        devices: bool,
    },
    /// The root filesystem as one tar (`-`: standard output).
    Tar {
        dest: PathBuf,
        devices: bool,
    },
}

/// Parses an `--output` as buildx reads it (`util/buildflags/export.go`): a
/// value with no `=` and no `,` is a directory for the local exporter, or
/// `-` for a tar on standard output; anything else is `type=…,key=value`.
/// Its layers are compressed with `default` unless it says otherwise
/// (`compression=`, `compression-level=`).
fn parse_output(spec: &str, default: Codec) -> Result<Output, Failure> {
    if !spec.contains(['=', ',']) {
        return Ok(if spec == "-" {
            Output::Tar {
                dest: PathBuf::from("-"),
                devices: false,
            }
        } else {
            Output::Local {
                dest: PathBuf::from(spec),
                devices: false,
            }
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut devices = None;
    let mut names = Vec::new();
    let mut push = false;
    let mut compression = CompressionFields::default();
    for field in spec.split(',') {
        if let Some((k, v)) = field.split_once('=') {
            let taken = compression.take(k, v).map_err(|why| {
                Failure::Usage(format!(
                    "invalid --output field {field:?} in {spec:?}: {why}"
                ))
            })?;
            if taken {
                continue;
            }
        }
        match field.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_string()),
            Some(("dest", v)) => dest = Some(PathBuf::from(v)),
            Some(("name", v)) => names.push(
                Reference::parse(v)
                    .map_err(|e| Failure::Usage(format!("--output {spec:?}: {e}")))?,
            ),
            Some(("push", v)) => {
                push = match v {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Failure::Usage(format!(
                            "invalid --output field {field:?} in {spec:?}: push is true or false"
                        )))
                    }
                }
            }
            Some(("devices", v)) => {
                devices = Some(match v {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Failure::Usage(format!(
                            "invalid --output field {field:?} in {spec:?}: devices is true or false"
                        )))
                    }
                })
            }
            _ if !field.contains('=') && kind.is_none() => kind = Some(field.to_string()),
            _ => {
                return Err(Failure::Usage(format!(
                    "invalid --output field {field:?} in {spec:?}"
                )))
            }
        }
    }
    let need_dest = |dest: Option<PathBuf>, kind: &str| {
        dest.ok_or_else(|| Failure::Usage(format!("--output type={kind} needs dest=PATH")))
    };
    if devices.is_some() && !matches!(kind.as_deref(), Some("local" | "tar")) {
        return Err(Failure::Usage(format!(
            "--output {spec:?}: devices= is for type=local and type=tar only"
        )));
    }
    if (push || !names.is_empty()) && !matches!(kind.as_deref(), Some("image" | "registry") | None)
    {
        return Err(Failure::Usage(format!(
            "--output {spec:?}: name= and push= are for type=image and type=registry"
        )));
    }
    if compression.given() && !matches!(kind.as_deref(), Some("image" | "registry" | "oci") | None)
    {
        return Err(Failure::Usage(format!(
            "--output {spec:?}: compression= and compression-level= are for type=oci, \
             type=image and type=registry (docker archives hold uncompressed layers)"
        )));
    }
    let codec = compression
        .codec(default)
        .map_err(|why| Failure::Usage(format!("--output {spec:?}: {why}")))?;
    match kind.as_deref() {
        // BuildKit's type=registry is type=image,push=true.
        Some("registry") => Ok(Output::Registry { names, codec }),
        Some("image") | None if push => Ok(Output::Registry { names, codec }),
        // Nothing is compressed for the store.
        Some("image") | None => Ok(Output::Image),
        Some("oci") => Ok(Output::Oci {
            dest: need_dest(dest, "oci")?,
            codec,
        }),
        Some("docker") => Ok(Output::Docker(need_dest(dest, "docker")?)),
        Some("local") => Ok(Output::Local {
            dest: need_dest(dest, "local")?,
            devices: devices.unwrap_or(false),
        }),
        Some("tar") => Ok(Output::Tar {
            dest: need_dest(dest, "tar")?,
            devices: devices.unwrap_or(false),
        }),
        Some(other) => Err(Failure::Usage(format!(
            "unknown --output type {other:?}: use image, registry, oci, docker, local or tar"
        ))),
    }
}

pub(crate) fn build(args: &BuildArgs, root: Option<&Path>) -> Result<(), Failure> {
    if args.dry_run {
        let source = super::context::open(&args.context, args.file.as_deref(), None)?;
        let opts = plan_options(args, &source.path)?;
        return dry_run(args, &source, &opts);
    }
    if args.check {
        let source = super::context::open(&args.context, args.file.as_deref(), None)?;
        let opts = plan_options(args, &source.path)?;
        return super::checks::check_only(args, &source, &opts, root);
    }
    let default_codec = super::registry::codec(args.compression, args.compression_level)?;
    let outputs = args
        .outputs
        .iter()
        .map(|o| parse_output(o, default_codec))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| Failure::Usage(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|c| super::cache::parse_to(c))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|c| super::cache::parse_from(c))
        .collect::<Result<Vec<_>, _>>()?;
    let secrets = args
        .secrets
        .iter()
        .map(|s| parse_secret(s))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    for (flag, value) in [("--provenance", &args.provenance), ("--sbom", &args.sbom)] {
        if let Some(v) = value {
            if !matches!(v.to_ascii_lowercase().as_str(), "false" | "0") {
                return Err(Failure::Usage(format!(
                    "estiba build does not support {flag}={v}: it makes no attestations \
                     ({flag}=false is accepted)"
                )));
            }
        }
    }
    let host = host_settings(args)?;
    let isolation = isolation(args)?;
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let source = super::context::open(&args.context, args.file.as_deref(), Some(&store))?;
    let text = &source.text;
    let opts = plan_options(args, &source.path)?;
    let plain = Plain::new();
    let tty = super::progress::Tty::new("Building");
    let shown = super::progress::chosen(args.progress, args.quiet, &plain, &tty);
    // What a Ctrl-C names as running.
    let tracked = super::interrupt::Tracked(shown);
    let reporter: &dyn Reporter = &tracked;
    let registry = super::registry::open()?;
    let policy = if args.pull {
        PullPolicy::Always
    } else {
        PullPolicy::Missing
    };
    let images = Images::with_registry(&store, &registry, policy, reporter);
    let graph = plan(text, &opts, &images).map_err(|error| Failure::Dockerfile {
        span: error.span().cloned(),
        error: Box::new(error),
        source: text.clone(),
    })?;
    for w in &graph.warnings {
        reporter.warning(&w.message);
    }
    let no_cache_stages = no_cache_stages(args, &graph, reporter);
    // A context unpacked from standard input is new every time: it has no
    // stat cache worth keeping.
    let stat_cache = (!source.from_stdin).then(|| {
        store.stat_cache_file(&estiba_cache::Digest::of(
            source
                .dir
                .canonicalize()
                .unwrap_or_default()
                .as_os_str()
                .as_encoded_bytes(),
        ))
    });
    // The new stat cache file is written here, so a killed build's goes with
    // the leftovers the next command removes.
    let stat_scratch = store.temp_dir("statcache")?;
    let context = BuildContext::open(&source.dir, Some(&source.named), stat_cache)
        .with_context(|| format!("cannot use the build context {}", args.context.display()))?
        .with_stat_cache_temp_dir(stat_scratch.path());
    let lint = super::checks::before_build(text, &opts, &graph, &images, context.ignore_matcher())?;
    let named_dirs = named_contexts(args)?
        .into_iter()
        .filter_map(|(name, (_, dir))| dir.map(|d| (name, d)))
        .map(|(name, dir)| {
            BuildContext::open(&dir, None, None)
                .with_context(|| format!("cannot use the build context {name} ({})", dir.display()))
                .map(|c| (name, c))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let epoch = source_date_epoch()?;
    // Only each source's manifest and config now; layers when a step hits.
    let remote = RemoteCache::load(Some(&registry), &cache_from, reporter);
    let solver = Solver::new(
        &images,
        &context,
        reporter,
        SolveOptions {
            no_cache: args.no_cache,
            epoch,
            secrets,
            network: match args.network {
                BuildNetwork::Default => Network::Private,
                BuildNetwork::Host => Network::Host,
                BuildNetwork::None => Network::None,
            },
            allow: args
                .allow
                .iter()
                .map(|a| match a {
                    AllowArg::SecurityInsecure => Entitlement::SecurityInsecure,
                    AllowArg::NetworkHost => Entitlement::NetworkHost,
                })
                .collect(),
            host,
            no_cache_stages,
            isolation,
        },
    )
    .with_remote_cache(&remote)
    .with_named_contexts(
        named_dirs
            .iter()
            .map(|(name, c)| (name.clone(), c as &(dyn estiba::tree::SourceTree + Sync)))
            .collect(),
    );
    let built = solver.solve(&graph).map_err(|error| Failure::Dockerfile {
        span: error.span.clone(),
        error: Box::new(error),
        source: text.clone(),
    })?;
    let _ = context.save_stat_cache();
    let export_id = solver.vertex();
    let export_start = std::time::Instant::now();
    reporter.started(export_id, "exporting to image");
    let entries = solver.cache_entries();
    // The steps of the final image: what mode=min (and inline) export.
    let min_entries: Vec<CacheEntry> = entries
        .iter()
        .filter(|e| {
            e.layer
                .as_ref()
                .is_some_and(|l| built.layers.iter().any(|b| b.diff_id == l.diff_id))
        })
        .cloned()
        .collect();
    let mut config = built.config.clone();
    // A base image's inline cache describes the base, not this image.
    config.other.remove(INLINE_CACHE_KEY);
    if cache_to.iter().any(|c| matches!(c, CacheTo::Inline)) {
        config.other.insert(
            INLINE_CACHE_KEY.to_string(),
            inline_metadata(&min_entries, &built.layers),
        );
    }
    let manifest = estiba::image::store_image(&store, &config, &built.layers)
        .context("cannot store the image")?;
    let config_digest = estiba_cache::Digest::of(
        &serde_json::to_vec(&config).context("cannot serialize the config")?,
    );
    let image_id = config_digest.to_string();
    let want_image = outputs.is_empty() || outputs.contains(&Output::Image);
    if want_image && tags.is_empty() {
        // Listed as `<none>` and found by its ID, as docker's.
        store.add_unnamed(&manifest)?;
    }
    if want_image {
        for tag in &tags {
            store
                .set_tag(&tag.to_string(), &manifest)
                .with_context(|| format!("cannot tag {}", tag.familiar()))?;
        }
    }
    // Where the image is pushed: -t names with --push, and every
    // type=registry output (its name=, else the -t names).
    let mut push_to: Vec<(Reference, Codec)> = Vec::new();
    if args.push {
        push_to.extend(tags.iter().map(|t| (t.clone(), default_codec)));
    }
    for output in &outputs {
        if let Output::Registry { names, codec } = output {
            push_to.extend(
                if names.is_empty() { &tags } else { names }
                    .iter()
                    .map(|n| (n.clone(), *codec)),
            );
        }
    }
    if (args.push || outputs.iter().any(|o| matches!(o, Output::Registry { .. })))
        && push_to.is_empty()
    {
        return Err(Failure::Usage(
            "pushing needs a name: give -t NAME (or --output type=registry,name=NAME)".to_string(),
        ));
    }
    push_to.dedup();
    for output in &outputs {
        match output {
            Output::Image | Output::Registry { .. } => {}
            Output::Oci { dest, codec } => super::images::write_archive(
                &store,
                &[(tags_or_default(&tags), manifest.clone())],
                dest,
                true,
                *codec,
            )?,
            Output::Docker(dest) => super::images::write_archive(
                &store,
                &[(tags_or_default(&tags), manifest.clone())],
                dest,
                false,
                default_codec,
            )?,
            Output::Local { dest, devices } => {
                super::images::export_rootfs(&store, &built, dest, *devices, reporter)?
            }
            Output::Tar { dest, devices } => {
                super::images::export_rootfs_tar(&store, &built, dest, *devices, reporter)?
            }
        }
    }
    let mut pushed = Vec::with_capacity(push_to.len());
    if !push_to.is_empty() {
        let image = estiba::image::read(&store, &image_id, &manifest)
            .map_err(|e| anyhow::anyhow!(estiba::solve::error_chain(&e)))?;
        for (dest, codec) in &push_to {
            let opts = PushOptions {
                format: super::registry::format(args.push_format),
                compression: *codec,
            };
            pushed.push(images.push(&image, dest, &opts).map_err(|error| {
                Failure::Other(anyhow::anyhow!(estiba::solve::error_chain(&error)))
            })?);
        }
    }
    let mut exported = Vec::new();
    for to in &cache_to {
        let CacheTo::Artifact {
            dest,
            mode,
            compression,
        } = to
        else {
            continue;
        };
        let chosen = match mode {
            CacheMode::Min => &min_entries,
            CacheMode::Max => &entries,
        };
        let id = solver.vertex();
        let started = std::time::Instant::now();
        let what = match dest {
            CacheDest::Registry { reference } => reference.to_string(),
            CacheDest::Local { dir } => dir.display().to_string(),
        };
        reporter.started(id, &format!("exporting cache to {what}"));
        let digest = export_cache(
            &store,
            Some(&registry),
            dest,
            chosen,
            &CacheExportOptions {
                compression: *compression,
            },
            reporter,
            id,
        )
        .map_err(|e| anyhow::anyhow!(estiba::solve::error_chain(&e)))
        .with_context(|| format!("cannot export the build cache to {what}"))?;
        reporter.log(
            id,
            &format!("{} steps, manifest {digest} done", chosen.len()),
        );
        reporter.done(id, started.elapsed());
        exported.push((what, digest));
    }
    if let Some(f) = &args.metadata_file {
        super::registry::write_metadata(f, &config_digest, &pushed, &exported)?;
    }
    if let Some(f) = &args.iidfile {
        std::fs::write(f, &image_id).with_context(|| format!("cannot write {}", f.display()))?;
    }
    reporter.log(export_id, &format!("writing image {image_id} done"));
    for tag in &tags {
        reporter.log(export_id, &format!("naming to {tag} done"));
    }
    reporter.done(export_id, export_start.elapsed());
    tty.finish();
    if args.quiet {
        println!("{image_id}");
    } else {
        for p in &pushed {
            super::registry::print_pushed(p);
        }
    }
    super::checks::after_build(&lint);
    Ok(())
}

/// `--isolation` (or `ESTIBA_ISOLATION`), with its one warning printed.
fn isolation(args: &BuildArgs) -> Result<Isolation, Failure> {
    let isolation = Isolation::parse(&args.isolation).ok_or_else(|| {
        Failure::Usage(format!(
            "invalid --isolation {:?}: estiba takes default or chroot (docker's process and \
             hyperv are Windows containers')",
            args.isolation
        ))
    })?;
    if isolation == Isolation::Chroot && !nix::unistd::geteuid().is_root() {
        return Err(Failure::Usage(
            "--isolation chroot needs root: chroot(2) and the device nodes of /dev need \
             CAP_SYS_CHROOT and CAP_MKNOD"
                .to_owned(),
        ));
    }
    if let Some(warning) = isolation.warning() {
        eprintln!("warning: {warning}");
    }
    Ok(isolation)
}

/// `--add-host`, `--shm-size` and `--ulimit`, read as the docker CLI reads
/// them.
fn host_settings(args: &BuildArgs) -> Result<HostSettings, Failure> {
    let extra_hosts = args
        .add_hosts
        .iter()
        .map(|h| parse_add_host(h))
        .collect::<Result<_, _>>()?;
    let shm_size = args
        .shm_size
        .as_deref()
        .map(|s| {
            parse_size(s).ok_or_else(|| {
                Failure::Usage(format!(
                    "invalid --shm-size {s:?}: give a size like 64m or 1g"
                ))
            })
        })
        .transpose()?;
    let ulimits = args
        .ulimits
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<Result<_, _>>()?;
    Ok(HostSettings {
        extra_hosts,
        shm_size,
        ulimits,
    })
}

/// `--add-host NAME:IP` or `NAME=IP` (the docker CLI's `ValidateExtraHost`:
/// `=` first, so an IPv6 address needs no brackets; brackets are accepted).
fn parse_add_host(spec: &str) -> Result<(String, IpAddr), Failure> {
    let usage = |why: &str| Failure::Usage(format!("invalid --add-host {spec:?}: {why}"));
    let (name, address) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| usage("expected HOST:IP"))?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(usage("the host name is empty or has spaces"));
    }
    if address == "host-gateway" {
        return Err(usage(
            "host-gateway needs a daemon's bridge, which estiba does not have; \
             give the address",
        ));
    }
    let address = address.trim_start_matches('[').trim_end_matches(']');
    let ip = address
        .parse()
        .map_err(|_| usage(&format!("{address:?} is not an IP address")))?;
    Ok((name.to_string(), ip))
}

/// A size as docker's `units.RAMInBytes` reads it: a number with an
/// optional b, k, m, g, t or p (binary multiples, optional trailing `b` or
/// `ib`, any case).
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let bytes = number * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// `--ulimit NAME=SOFT[:HARD]` (`docker/go-units` `ParseUlimit`: the hard
/// limit defaults to the soft one, -1 is unlimited, soft may not exceed hard).
fn parse_ulimit(spec: &str) -> Result<Ulimit, Failure> {
    let usage = |why: String| Failure::Usage(format!("invalid --ulimit {spec:?}: {why}"));
    let (name, limits) = spec
        .split_once('=')
        .ok_or_else(|| usage("expected NAME=SOFT[:HARD]".to_string()))?;
    let resource = UlimitResource::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = UlimitResource::ALL.iter().map(|(n, _)| *n).collect();
        usage(format!(
            "unknown limit {name:?}: one of {}",
            names.join(", ")
        ))
    })?;
    let number = |v: &str| {
        v.parse::<i64>()
            .ok()
            .filter(|n| *n >= -1)
            .ok_or_else(|| usage(format!("{v:?} is not a limit (a number, or -1)")))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(limits)?, number(limits)?),
    };
    let unlimited = |v: i64| if v == -1 { i64::MAX } else { v };
    if unlimited(soft) > unlimited(hard) {
        return Err(usage(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        )));
    }
    Ok(Ulimit {
        resource,
        soft,
        hard,
    })
}

/// `--no-cache-filter`'s stages, lower case as stage names are; a name
/// that is no stage gets a warning (BuildKit ignores it silently).
fn no_cache_stages(
    args: &BuildArgs,
    graph: &estiba_frontend::BuildGraph,
    reporter: &dyn Reporter,
) -> BTreeSet<String> {
    let mut stages = BTreeSet::new();
    for name in &args.no_cache_filter {
        let name = name.to_ascii_lowercase();
        if !graph
            .stages
            .iter()
            .any(|s| s.name.as_deref() == Some(&name))
        {
            reporter.warning(&format!(
                "--no-cache-filter {name}: the Dockerfile has no stage named {name}"
            ));
        }
        stages.insert(name);
    }
    stages
}

/// `SOURCE_DATE_EPOCH`, when set and not empty: the time every timestamp
/// an image records is given, for images that are the same bytes on any
/// day.
pub(crate) fn source_date_epoch() -> Result<Option<i64>, Failure> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.parse::<i64>().map(Some).map_err(|_| {
            Failure::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        }),
        _ => Ok(None),
    }
}

fn tags_or_default(tags: &[Reference]) -> Vec<String> {
    tags.iter().map(|t| t.to_string()).collect()
}

fn dry_run(
    args: &BuildArgs,
    source: &super::context::Source,
    opts: &PlanOptions,
) -> Result<(), Failure> {
    let text = &source.text;
    let path = &source.path;
    let graph = plan(text, opts, &NoImages).map_err(|error| Failure::Dockerfile {
        span: error.span().cloned(),
        error: Box::new(error),
        source: text.to_string(),
    })?;
    let context = BuildContext::open(&source.dir, Some(&source.named), None)
        .with_context(|| format!("cannot use the build context {}", args.context.display()))?;
    match args.format {
        PlanFormat::Json => {
            let json = serde_json::to_string_pretty(&graph).context("cannot serialize the plan")?;
            println!("{json}");
        }
        PlanFormat::Text => {
            println!("dockerfile: {}", path.display());
            println!("context: {}", args.context.display());
            match context.ignore_file() {
                Some(file) => println!("ignore file: {}", file.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_output_makes_devices_only_when_asked() {
        let local = |devices| Output::Local {
            dest: PathBuf::from("d"),
            devices,
        };
        for (spec, want) in [
            ("type=local,dest=d", local(false)),
            ("type=local,dest=d,devices=false", local(false)),
            ("local,dest=d,devices=true", local(true)),
        ] {
            assert_eq!(parse_output(spec, GZIP).ok(), Some(want), "{spec}");
        }
        for bad in [
            "type=local,dest=d,devices=yes",
            "type=oci,dest=d,devices=true",
            "devices=true",
        ] {
            assert!(
                matches!(parse_output(bad, GZIP), Err(Failure::Usage(_))),
                "{bad}"
            );
        }
    }

    const GZIP: Codec = Codec::default_for(estiba::compress::Compression::Gzip);

    #[test]
    fn outputs_take_compression_and_level_as_buildx_spells_them() {
        use estiba::compress::Compression::{Gzip, Zstd};
        let codec = |compression, level| Codec { compression, level };
        let oci = |compression, level| {
            Some(Output::Oci {
                dest: PathBuf::from("o.tar"),
                codec: codec(compression, level),
            })
        };
        let registry = |compression, level| {
            Some(Output::Registry {
                names: Vec::new(),
                codec: codec(compression, level),
            })
        };
        let zstd9 = codec(Zstd, 9);
        for (spec, default, want) in [
            ("type=oci,dest=o.tar", GZIP, oci(Gzip, GZIP.level)),
            ("type=oci,dest=o.tar", zstd9, oci(Zstd, 9)),
            ("type=oci,dest=o.tar,compression=zstd", GZIP, oci(Zstd, 3)),
            (
                "type=oci,dest=o.tar,compression=zstd,compression-level=3",
                GZIP,
                oci(Zstd, 3),
            ),
            (
                "type=oci,dest=o.tar,compression-level=1",
                GZIP,
                oci(Gzip, 1),
            ),
            (
                "type=oci,dest=o.tar,compression=zstd,compression-level=0",
                GZIP,
                oci(Zstd, 3),
            ),
            (
                "type=oci,dest=o.tar,compression=gzip",
                zstd9,
                oci(Gzip, GZIP.level),
            ),
            (
                "type=registry,compression=zstd,compression-level=19",
                GZIP,
                registry(Zstd, 19),
            ),
            (
                "type=image,push=true,compression-level=9",
                GZIP,
                registry(Gzip, 9),
            ),
            ("type=image,compression=zstd", GZIP, Some(Output::Image)),
        ] {
            assert_eq!(parse_output(spec, default).ok(), want, "{spec}");
        }
        for bad in [
            "type=oci,dest=o.tar,compression=lz4",
            "type=oci,dest=o.tar,compression-level=10",
            "type=oci,dest=o.tar,compression-level=high",
            "type=docker,dest=d.tar,compression=zstd",
            "type=local,dest=d,compression-level=1",
        ] {
            assert!(
                matches!(parse_output(bad, GZIP), Err(Failure::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_parse_as_buildx_reads_them() {
        let file = std::env::current_exe().expect("exe");
        let f = file.display();
        for (spec, id, source) in [
            (
                format!("id=a,src={f}"),
                "a",
                SecretSource::File(file.clone()),
            ),
            (
                format!("id=a,source={f}"),
                "a",
                SecretSource::File(file.clone()),
            ),
            (
                format!("type=file,id=a,src={f}"),
                "a",
                SecretSource::File(file.clone()),
            ),
            (
                "id=b,env=VAR".to_string(),
                "b",
                SecretSource::Env("VAR".into()),
            ),
            (
                "type=env,id=b,src=VAR".to_string(),
                "b",
                SecretSource::Env("VAR".into()),
            ),
        ] {
            let parsed = parse_secret(&spec).ok();
            assert_eq!(parsed, Some((id.to_string(), source)), "{spec}");
        }
        for bad in ["src=/x", "id=a,type=ssh", "id=a,color=red", "id=a,nokey"] {
            assert!(parse_secret(bad).is_err(), "{bad}");
        }
    }
}
