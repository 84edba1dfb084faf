//! RUN: its mounts (bind, cache, tmpfs, secret), its network, and the
//! build container it runs in, whose upper directory becomes the layer.

use super::*;

impl<'a> Solver<'a> {
    /// The network a RUN step gets: its own `--network`, else the build's.
    pub(super) fn run_network(&self, run: &estiba_frontend::graph::RunStep) -> Network {
        match run.network.as_deref() {
            Some("none") => Network::None,
            Some("host") => Network::Host,
            _ => self.opts.network,
        }
    }

    /// The sources of a RUN's bind mounts and of the cache mounts that
    /// start from a stage or an image (`from=`), by mount index: matched in
    /// the context, a stage or an image. A bind source is hashed for the
    /// step's key; a cache seed is named by its stage's key or its image's
    /// digest and its path, as BuildKit keys the cache mount's input.
    pub(super) fn mount_sources(
        &self,
        graph: &BuildGraph,
        stage: &Stage,
        run: &estiba_frontend::graph::RunStep,
        built: &Finished,
    ) -> Result<BTreeMap<usize, MountSource<'a>>> {
        use estiba_frontend::instructions::MountKind;
        let mut out = BTreeMap::new();
        for (i, m) in run.mounts.iter().enumerate() {
            let seeded = m.kind == MountKind::Cache && cache_is_seeded(m);
            if m.kind != MountKind::Bind && !seeded {
                continue;
            }
            let (tree, keep_owners, from, identity): (Rc<dyn SourceTree + 'a>, bool, String, _) =
                match (m.stage, &m.from) {
                    (Some(index), _) => {
                        let name = graph
                            .stages
                            .get(index)
                            .map_or_else(|| format!("stage {index}"), |s| s.display_name());
                        let b = built.get(graph, index)?;
                        (
                            Rc::new(self.layered(&b.layers)?),
                            true,
                            format!("stage {name}"),
                            Some(b.key.clone()),
                        )
                    }
                    (None, Some(reference)) => {
                        let image = self.images.get(reference, &stage.platform)?;
                        (
                            Rc::new(self.layered(&image.layers)?),
                            true,
                            format!("image {reference}"),
                            Some(image.descriptor.digest.to_string()),
                        )
                    }
                    (None, None) => (
                        Rc::new(self.context),
                        false,
                        copy::CONTEXT.to_string(),
                        None,
                    ),
                };
            let source_path = m.source.clone().unwrap_or_else(|| "/".to_string());
            let failed = |source: copy::CopyError| SolveErrorKind::BindSource {
                source_path: source_path.clone(),
                from: from.clone(),
                source: Box::new(source),
            };
            let matched = copy::match_sources(
                tree.as_ref(),
                std::slice::from_ref(&source_path),
                false,
                &from,
            )
            .map_err(failed)?;
            let [matched] = <[copy::SourceMatch; 1]>::try_from(matched).map_err(|_| {
                failed(copy::CopyError::NotFound {
                    source_path: source_path.clone(),
                    tree: from.clone(),
                })
            })?;
            let key = match identity {
                Some(identity) if seeded => {
                    format!("cache-from {identity}:{}", matched.path)
                }
                _ => copy::hash_sources(
                    tree.as_ref(),
                    std::slice::from_ref(&matched),
                    None,
                    keep_owners,
                )
                .map_err(failed)?
                .to_string(),
            };
            out.insert(
                i,
                MountSource {
                    tree,
                    matched,
                    keep_owners,
                    key,
                },
            );
        }
        Ok(out)
    }

    /// A private copy of a bind mount's source in the store's temp dir,
    /// removed with the returned dir; returns the path to bind. The copy
    /// keeps writes to a `rw` mount out of the context and the layer. A
    /// directory keeps its own mode and owner: the mount shows it itself.
    pub(super) fn materialize(&self, bind: &MountSource<'_>) -> Result<(TempDir, PathBuf)> {
        let dir = self.store.temp_dir("bind")?;
        let mut writer = Writer::new(
            LayeredTree::new(Vec::new()),
            CopyOptions {
                mtime: self.time(),
                keep_owners: bind.keep_owners,
                dir_itself: true,
                ..CopyOptions::default()
            },
        );
        writer.copy(
            &bind.tree,
            std::slice::from_ref(&bind.matched),
            "/source",
            None,
        )?;
        writer.write_to_dir(dir.path())?;
        let path = dir.path().join("source");
        Ok((dir, path))
    }

    /// Makes the cache mount directory `dir` a copy of what `seed` names,
    /// as BuildKit makes a new cache from the mount's input
    /// (`getRefCacheDirNoCache`); another build that made it meanwhile wins.
    pub(super) fn seed_cache(
        &self,
        seed: &MountSource<'_>,
        target: &str,
        dir: &std::path::Path,
    ) -> Result<()> {
        let io = |source| SolveErrorKind::Io {
            path: dir.to_path_buf(),
            source,
        };
        let (tmp, made) = self.materialize(seed)?;
        if !made.is_dir() {
            return Err(SolveErrorKind::CacheSeedNotDir {
                target: target.to_string(),
                source_path: format!("/{}", seed.matched.path),
            });
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if let Err(error) = std::fs::rename(&made, dir) {
            if !dir.is_dir() {
                return Err(io(error));
            }
        }
        drop(tmp);
        Ok(())
    }

    /// A secret's value, or `None` when the build was not given it.
    pub(super) fn secret_value(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match self.opts.secrets.get(id) {
            None => Ok(None),
            Some(SecretSource::File(path)) => match std::fs::read(path) {
                Ok(value) => Ok(Some(value)),
                Err(source) => Err(SolveErrorKind::SecretRead {
                    id: id.to_string(),
                    source,
                }),
            },
            Some(SecretSource::Env(var)) => {
                use std::os::unix::ffi::OsStringExt;
                Ok(std::env::var_os(var).map(OsStringExt::into_vec))
            }
        }
    }

    /// A secret's value in a file in a temp dir of the store (mode 0400 or
    /// `mode=`, owned by `uid=`/`gid=`), removed when the returned dir is
    /// dropped; returns the dir and the file.
    pub(super) fn secret_file(
        &self,
        value: &[u8],
        mount: &estiba_frontend::instructions::Mount,
    ) -> Result<(TempDir, PathBuf)> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = self.store.temp_dir("secret")?;
        let path = dir.path().join("secret");
        let io = |source| SolveErrorKind::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(value).map_err(io)?;
        file.sync_all().map_err(io)?;
        let mode = mount.mode.unwrap_or(0o400) & 0o7777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        std::os::unix::fs::chown(
            &path,
            Some(mount.uid.unwrap_or(0)),
            Some(mount.gid.unwrap_or(0)),
        )
        .map_err(io)?;
        Ok((dir, path))
    }

    /// RUN: the command in a build container above `current`'s layers; its
    /// upper dir becomes the layer. A non-zero exit fails the step, and
    /// nothing of it is cached.
    ///
    /// Bind mounts see private copies and secrets temp files of the store,
    /// all removed when the step ends, so neither reaches the layer.
    pub(super) fn exec_run(
        &self,
        current: &Built,
        run: &estiba_frontend::graph::RunStep,
        binds: &BTreeMap<usize, MountSource<'_>>,
        id: usize,
    ) -> Result<Layer> {
        use crate::executor::{self, ExtraMount, RunOptions, RunSpec};
        use estiba_frontend::instructions::MountKind;
        let lower = self.layered(&current.layers)?;
        let upper = self.store.temp_dir("upper")?;
        // The overlay's work dir and the executor's own scratch files.
        let scratch = self.store.temp_dir("run")?;
        let work = scratch.path().join("work");
        std::fs::create_dir(&work).map_err(|source| SolveErrorKind::Io {
            path: work.clone(),
            source,
        })?;
        let mut mounts = Vec::new();
        // Kept until the command has ended, then removed.
        let mut bind_dirs = Vec::new();
        let mut secret_files = Vec::new();
        let mut secret_env = Vec::new();
        for (i, m) in run.mounts.iter().enumerate() {
            let target = m
                .target
                .as_deref()
                .map(|t| absolute_target(t, &run.workdir))
                .unwrap_or_default();
            match m.kind {
                MountKind::Tmpfs => mounts.push(ExtraMount::Tmpfs {
                    target,
                    size: m.size,
                }),
                MountKind::Cache => {
                    // A directory of the store that outlives builds and
                    // never enters a layer; only what it starts from
                    // (`from=`) is in the step's key.
                    let id =
                        m.id.clone()
                            .unwrap_or_else(|| m.target.clone().unwrap_or_default());
                    // BuildKit's cache starts from a directory made with
                    // the mount's uid/gid/mode, or from a path of a stage or
                    // image (`from=`): they are part of its identity, as the
                    // mount's input ref is of BuildKit's cache key
                    // (solver/llbsolver/mounts/mount.go `getRefCacheDir`).
                    let seed = binds.get(&i);
                    let mut identity = format!("{id}\0{:?}\0{:?}\0{:?}", m.uid, m.gid, m.mode);
                    if let Some(seed) = seed {
                        identity.push('\0');
                        identity.push_str(&seed.key);
                    }
                    let dir = self.store.mount_cache_dir(&Digest::of(identity.as_bytes()));
                    if let (Some(seed), false) = (seed, dir.exists()) {
                        self.seed_cache(seed, &target, &dir)?;
                    }
                    if !dir.exists() {
                        // Made once, owned and moded as the mount asks
                        // (BuildKit: uid, gid default 0, mode 0755).
                        let io = |source| SolveErrorKind::Io {
                            path: dir.clone(),
                            source,
                        };
                        let parent = dir.parent().unwrap_or(&dir);
                        std::fs::create_dir_all(parent).map_err(io)?;
                        let fresh = self.store.temp_dir("cache")?;
                        nix::unistd::chown(
                            fresh.path(),
                            Some(m.uid.unwrap_or(0).into()),
                            Some(m.gid.unwrap_or(0).into()),
                        )
                        .map_err(|e| io(e.into()))?;
                        std::fs::set_permissions(
                            fresh.path(),
                            std::os::unix::fs::PermissionsExt::from_mode(m.mode.unwrap_or(0o755)),
                        )
                        .map_err(io)?;
                        // Another build may have made it meanwhile: keep theirs.
                        let made = fresh.keep();
                        if std::fs::rename(&made, &dir).is_err() {
                            let _ = std::fs::remove_dir(&made);
                        }
                    }
                    mounts.push(ExtraMount::Bind {
                        source: dir,
                        target,
                        readonly: false,
                    });
                }
                MountKind::Bind => {
                    let bind = binds.get(&i).ok_or_else(|| SolveErrorKind::CorruptImage {
                        image: "(plan)".to_string(),
                        reason: format!("bind mount at {target} has no source"),
                    })?;
                    let (dir, source) = self.materialize(bind)?;
                    bind_dirs.push(dir);
                    mounts.push(ExtraMount::Bind {
                        source,
                        target,
                        readonly: m.readonly,
                    });
                }
                MountKind::Secret => {
                    let id = secret_id(m);
                    let Some(value) = self.secret_value(&id)? else {
                        if m.required {
                            return Err(SolveErrorKind::SecretNotFound(id));
                        }
                        // Docker skips an optional secret it was not given.
                        continue;
                    };
                    // With only `env=`, BuildKit (0.14+) mounts no file.
                    let target = match (&m.target, &m.env) {
                        (Some(_), _) => Some(target),
                        (None, None) => Some(format!("/run/secrets/{id}")),
                        (None, Some(_)) => None,
                    };
                    if let Some(target) = target {
                        let (file, path) = self.secret_file(&value, m)?;
                        mounts.push(ExtraMount::Bind {
                            source: path,
                            target,
                            readonly: true,
                        });
                        secret_files.push(file);
                    }
                    if let Some(var) = &m.env {
                        secret_env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                    }
                }
                MountKind::Ssh => return Err(SolveErrorKind::MountUnsupported("ssh")),
            }
        }
        let mut env = run.env.clone();
        env.extend(run.proxy_env.iter().cloned());
        env.extend(secret_env);
        let spec = RunSpec {
            lower: lower.layers().to_vec(),
            upper: upper.path().to_path_buf(),
            work,
            args: run.args.clone(),
            env,
            user: run.user.clone(),
            workdir: run.workdir.clone(),
            network: self.run_network(run),
            hostname: String::new(),
            files: run.files.clone(),
            mounts,
            publish: Vec::new(),
            security: match run.security.as_deref() {
                Some("insecure") => Security::Insecure,
                _ => Security::Sandbox,
            },
            host: self.opts.host.clone(),
            tty: false,
            // Package managers sync every file they write (dpkg: each one
            // it unpacks), for a result that is not kept unless the step
            // ends well, and then is synced as a layer: a fifth of an
            // `apt-get install`'s time here. Debian's and Ubuntu's images
            // ask dpkg for `force-unsafe-io` under docker for the same
            // reason.
            skip_sync: true,
        };
        // Stream whole lines to the reporter; keep the last ones for errors.
        let mut pending = Vec::new();
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let emit = |line: &[u8], tail: &mut std::collections::VecDeque<String>| {
            let text = String::from_utf8_lossy(line)
                .trim_end_matches('\r')
                .to_string();
            self.reporter.log(id, &text);
            tail.push_back(text);
            if tail.len() > 10 {
                tail.pop_front();
            }
        };
        let code = executor::run_with(
            &spec,
            &RunOptions {
                tmp_dir: scratch.path().to_path_buf(),
                isolation: self.opts.isolation,
                ..RunOptions::default()
            },
            &mut |_, bytes| {
                pending.extend_from_slice(bytes);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    emit(&line[..line.len() - 1], &mut tail);
                }
            },
        )?;
        if !pending.is_empty() {
            emit(&pending, &mut tail);
        }
        drop(secret_files);
        drop(bind_dirs);
        if code != 0 {
            let output = if tail.is_empty() {
                String::new()
            } else {
                let lines: Vec<String> = tail.iter().map(|l| format!("\n  | {l}")).collect();
                format!("\n  last output:{}", lines.concat())
            };
            return Err(SolveErrorKind::RunFailed {
                command: run.args.join(" "),
                code,
                output,
            });
        }
        drop(scratch);
        self.commit_upper(upper)
    }
}

/// The source of one `RUN --mount=type=bind`, or what a cache mount starts
/// from, matched and keyed before the step's key is known.
pub(super) struct MountSource<'t> {
    /// The context, or a stage's or image's root filesystem.
    tree: Rc<dyn SourceTree + 't>,
    /// `source=` in it.
    matched: copy::SourceMatch,
    /// Files keep their owners (a stage or image) or belong to root (the context).
    keep_owners: bool,
    /// What the step's key takes from it: a bind source's content digest,
    /// a cache seed's stage key or image digest with its path.
    pub(super) key: String,
}

/// Whether a cache mount starts from a path of a stage or an image
/// (`from=`, at `source=` or the root). With no `source=`, a `uid`, `gid`
/// or `mode` makes BuildKit start from a fresh `/cache` directory instead
/// (dockerfile2llb `convert_runmount.go`, `dispatchRunMounts` and
/// `setCacheUIDGID`); an empty `from=` is scratch there, as no `from=`.
pub(super) fn cache_is_seeded(m: &estiba_frontend::instructions::Mount) -> bool {
    if m.from.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let at_root = m
        .source
        .as_deref()
        .is_none_or(|s| tree::clean(s).is_empty());
    !(at_root && (m.uid.is_some() || m.gid.is_some() || m.mode.is_some()))
}

/// A secret mount's id: `id=`, else `source=`, else the target's file name,
/// as BuildKit's Dockerfile frontend picks it.
pub(super) fn secret_id(m: &estiba_frontend::instructions::Mount) -> String {
    m.id.clone()
        .or_else(|| m.source.clone())
        .or_else(|| {
            m.target
                .as_deref()
                .and_then(|t| t.trim_end_matches('/').rsplit('/').next())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A mount target: relative ones are relative to the step's WORKDIR.
pub(super) fn absolute_target(target: &str, workdir: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        let dir = if workdir.is_empty() { "/" } else { workdir };
        format!("{}/{target}", dir.trim_end_matches('/'))
    }
}
