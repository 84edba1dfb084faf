//! One step: its cache key, and the cache's layer or the step run. The
//! key's inputs are listed in [`crate::cachekey`].

use super::copy_step::writer_chown;
use super::*;

/// Where a step stands in the build.
pub(super) struct Place {
    /// Its progress vertex.
    pub(super) id: usize,
    /// Whether a later step, or another stage, reads the layer it makes.
    pub(super) read_later: bool,
}

impl<'a> Solver<'a> {
    /// One step: its layer (if it makes one), its key, and whether it was cached.
    pub(super) fn solve_step(
        &self,
        graph: &BuildGraph,
        stage: &Stage,
        step: &Step,
        current: &Built,
        built: &Finished,
        place: Place,
    ) -> Result<(Option<Layer>, String, bool)> {
        let Place { id, read_later } = place;
        let platform = stage.platform.to_string();
        // COPY --link makes a layer that does not depend on what is below it:
        // its key leaves the parent out, so a new base keeps it cached.
        let link = matches!(&step.op, Op::Copy(c) if c.link);
        let key_of = |sources: Option<String>,
                      from: Option<String>,
                      network: Option<&str>,
                      host: Option<&HostSettings>| {
            KeyInputs {
                version: KEY_VERSION,
                parent: if link {
                    "link".to_string()
                } else {
                    current.key.clone()
                },
                platform: platform.clone(),
                step: &step.op,
                sources,
                from,
                epoch: self.opts.epoch,
                network,
                host,
            }
            .key()
            .map_err(SolveErrorKind::Key)
        };
        match &step.op {
            Op::Config => Ok((None, key_of(None, None, None, None)?.to_string(), false)),
            Op::Run(run) => {
                // What a bind mount shows, and what a cache mount starts
                // from, is part of what the step reads.
                let binds = self.mount_sources(graph, stage, run, built)?;
                let sources = (!binds.is_empty()).then(|| {
                    let digests: Vec<&str> = binds.values().map(|b| b.key.as_str()).collect();
                    format!("bind {}", digests.join(" "))
                });
                // The build's network is part of what the step does (a
                // step's own `--network` is in its definition already).
                let network = match (run.network.as_deref(), self.opts.network) {
                    (Some("none" | "host"), _) | (_, Network::Private) => None,
                    (_, Network::None) => Some("none"),
                    (_, Network::Host) => Some("host"),
                };
                let host = (!self.opts.host.is_default()).then_some(&self.opts.host);
                let key = key_of(sources, None, network, host)?;
                self.cached_or(&key, stage, || self.exec_run(current, run, &binds, id))
            }
            Op::Workdir { path, user } => {
                if !step.layer {
                    return Ok((None, key_of(None, None, None, None)?.to_string(), false));
                }
                let key = key_of(None, None, None, None)?;
                self.cached_or(&key, stage, || {
                    self.exec_diff(current, false, read_later, |writer, lower| {
                        let owner = if user.is_empty() {
                            (0, 0)
                        } else {
                            // BuildKit creates it as root when the user is
                            // unknown to the image, rather than failing.
                            match resolve_user(lower, user) {
                                Err(SolveErrorKind::UnknownUser { .. }) => (0, 0),
                                other => other?,
                            }
                        };
                        writer.mkdir_owned(path, owner)?;
                        Ok(())
                    })
                })
            }
            Op::Copy(copy) => {
                // ADD <url>: downloaded first, so the content is in the key.
                let urls: Vec<&String> = copy.sources.iter().filter(|s| fetch::is_url(s)).collect();
                let downloads = self.store.temp_dir("download")?;
                // With --checksum the checksum names the content: a cache hit
                // needs no download. Without it, the content decides the key.
                let fetch_all = || -> Result<Vec<(PathBuf, fetch::Downloaded)>> {
                    let mut fetched = Vec::new();
                    for url in &urls {
                        let dir = downloads.path().join(fetched.len().to_string());
                        std::fs::create_dir_all(&dir).map_err(|source| SolveErrorKind::Io {
                            path: dir.clone(),
                            source,
                        })?;
                        let d = fetch::download(url, &dir, copy.checksum.as_deref())?;
                        fetched.push((dir, d));
                    }
                    Ok(fetched)
                };
                let prefetched = match &copy.checksum {
                    Some(_) => None,
                    None => Some(fetch_all()?),
                };
                let local: Vec<String> = copy
                    .sources
                    .iter()
                    .filter(|s| !fetch::is_url(s))
                    .cloned()
                    .collect();
                let (tree, from_key, what): (Rc<dyn SourceTree + '_>, Option<String>, String) =
                    match &copy.from {
                        CopySource::Context => {
                            (Rc::new(self.context), None, copy::CONTEXT.to_string())
                        }
                        CopySource::Named { name } => {
                            let tree = self
                                .named
                                .get(name)
                                .copied()
                                .ok_or_else(|| SolveErrorKind::NoNamedContext(name.clone()))?;
                            (Rc::new(tree), None, format!("build context {name}"))
                        }
                        CopySource::Stage { index } => {
                            let b = built.get(graph, *index)?;
                            let tree = self.layered(&b.layers)?;
                            (
                                Rc::new(tree),
                                Some(b.key.clone()),
                                format!("stage {}", graph.stages[*index].display_name()),
                            )
                        }
                        CopySource::Image { reference } => {
                            let image =
                                self.images
                                    .get(reference, &stage.platform)
                                    .map_err(|source| {
                                        let names =
                                            graph.stages.iter().filter_map(|s| s.name.as_deref());
                                        SolveErrorKind::CopyFromImage {
                                            reference: reference.clone(),
                                            stage: estiba_frontend::suggest::nearest(
                                                reference, names,
                                            )
                                            .map(str::to_string),
                                            source: Box::new(source),
                                        }
                                    })?;
                            (
                                Rc::new(self.layered(&image.layers)?),
                                Some(image.descriptor.digest.to_string()),
                                format!("image {reference}"),
                            )
                        }
                    };
                // Local sources arrive owned by root, as BuildKit's file
                // sync gives them.
                let keep_owners =
                    !matches!(copy.from, CopySource::Context | CopySource::Named { .. });
                let excludes = if copy.excludes.is_empty() {
                    None
                } else {
                    Some(Matcher::new(&copy.excludes).map_err(|source| {
                        copy::CopyError::Pattern {
                            pattern: copy.excludes.join(" "),
                            source,
                        }
                    })?)
                };
                let matches = copy::match_sources(tree.as_ref(), &local, copy.parents, &what)?;
                let digest =
                    copy::hash_sources(tree.as_ref(), &matches, excludes.as_ref(), keep_owners)?;
                let contents: Vec<String> = copy
                    .contents
                    .iter()
                    .map(|c| Digest::of(c.data.as_bytes()).to_string())
                    .collect();
                let urls_digest: Vec<String> = match (&prefetched, &copy.checksum) {
                    (Some(fetched), _) => fetched
                        .iter()
                        .map(|(_, d)| format!("{}={}", d.name, d.digest))
                        .collect(),
                    (None, Some(sum)) => urls.iter().map(|u| format!("{u}={sum}")).collect(),
                    (None, None) => Vec::new(),
                };
                let sources = format!("{digest} {} {}", contents.join(" "), urls_digest.join(" "));
                let key = key_of(Some(sources), from_key, None, None)?;
                let chain = |(layer, k, cached): (Option<Layer>, String, bool)| {
                    // What comes after depends on the base and the layer.
                    let k = if link {
                        Digest::of(format!("{}+{k}", current.key).as_bytes()).to_string()
                    } else {
                        k
                    };
                    (layer, k, cached)
                };
                self.cached_or(&key, stage, || {
                    self.exec_diff(current, link, read_later, |writer, lower| {
                        self.exec_copy(
                            copy,
                            writer,
                            lower,
                            &tree,
                            &matches,
                            excludes.as_ref(),
                            keep_owners,
                        )?;
                        // Downloads belong to root (or --chown); keep their 0600.
                        let fetched = match prefetched {
                            Some(f) => f,
                            None => fetch_all()?,
                        };
                        for (dir, d) in &fetched {
                            let tree: Rc<dyn SourceTree> =
                                Rc::new(LayeredTree::new(vec![dir.clone()]));
                            let m = copy::SourceMatch {
                                name: d.name.clone(),
                                path: d.name.clone(),
                                parents_path: None,
                            };
                            let chmod = match &copy.chmod {
                                Some(c) => Some(
                                    Chmod::parse(c)
                                        .ok_or_else(|| SolveErrorKind::BadChmod(c.clone()))?,
                                ),
                                None => None,
                            };
                            writer.set_options(writer_chown(lower, copy)?, chmod, false);
                            writer.copy(&tree, &[m], &copy.dest, None)?;
                        }
                        Ok(())
                    })
                })
                .map(chain)
            }
        }
    }
}
