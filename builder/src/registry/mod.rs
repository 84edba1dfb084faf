//! The OCI distribution client: references, auth, pull and push of
//! manifests and blobs, cross-repository mounts, TLS and insecure
//! registries, mirrors, retries. It speaks the protocol and nothing else:
//! it knows no store and no solver (the image layer decides what to fetch
//! and where the bytes go).
//!
//! The HTTP stack is `reqwest` on a tokio runtime owned by [`Registry`];
//! every method blocks, so no async leaks out. A `Registry` is `Send +
//! Sync`: threads share one to download layers concurrently.

mod auth;
mod blob;
pub mod config;
pub mod credentials;
mod error;
pub mod reference;
mod transport;

pub use blob::OpenBlob;
pub use config::RegistriesConfig;
pub use error::{Action, Content, RegistryError};
pub use reference::{Reference, ReferenceError};
pub use transport::{BACKOFF_BASE, BACKOFF_CAP, CONNECT_TIMEOUT, IDLE_TIMEOUT, MAX_ATTEMPTS};

use credentials::Credential;
use estiba_cache::oci::{media_type, Descriptor};
use estiba_cache::Digest;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use transport::{Call, Endpoint};

/// The largest manifest or index accepted (containerd's limit too).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// Blobs above this size are uploaded in chunks (PATCH), below it in one PUT.
pub const CHUNKED_UPLOAD_THRESHOLD: u64 = 256 * 1024 * 1024;
/// The size of each chunk of a chunked upload.
pub const UPLOAD_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Where docker reads per-registry CAs and client certificates.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";

/// The manifest types a pull accepts, as the `Accept` header lists them.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Where the client finds its settings.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The docker config directory holding `config.json`; `None` means
    /// `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Per-registry TLS files (`HOST[:PORT]/ca.crt`, `client.cert`, `client.key`).
    pub certs_dir: PathBuf,
    /// estiba's registries config ([`config`]); `None` means the default path.
    pub config_file: Option<PathBuf>,
    /// Blobs larger than this go up in chunks.
    pub chunked_upload_threshold: u64,
    /// The chunk size of chunked uploads.
    pub upload_chunk_size: u64,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            docker_config_dir: None,
            certs_dir: PathBuf::from(DEFAULT_CERTS_DIR),
            config_file: None,
            chunked_upload_threshold: CHUNKED_UPLOAD_THRESHOLD,
            upload_chunk_size: UPLOAD_CHUNK_SIZE,
        }
    }
}

impl RegistryOptions {
    /// The docker config directory these options name (or the default).
    pub fn docker_config_dir(&self) -> Result<PathBuf, RegistryError> {
        match &self.docker_config_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(credentials::default_dir()?),
        }
    }
}

/// A manifest or index as fetched: its bytes as they came, its media type
/// and its (verified) digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bytes, unchanged.
    pub bytes: Vec<u8>,
    /// From `Content-Type`, else the document's `mediaType`.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// A distribution client for every registry a build touches.
#[derive(Debug)]
pub struct Registry {
    opts: RegistryOptions,
    config: RegistriesConfig,
    config_path: Option<PathBuf>,
    runtime: tokio::runtime::Runtime,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    tokens: auth::TokenCache,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
    /// Upload sessions a refused mount opened, by (registry, repository,
    /// digest), for `put_blob` to use.
    pending_uploads: Mutex<HashMap<(String, String, Digest), reqwest::Url>>,
}

impl Registry {
    /// A client with `opts`; reads the registries config now (a malformed
    /// one is an error naming it).
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        let config_path = opts.config_file.clone().or_else(config::default_path);
        let config = match &config_path {
            Some(p) => RegistriesConfig::load(p)?,
            None => RegistriesConfig::default(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("estiba-http")
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Client(e.into()))?;
        Ok(Registry {
            opts,
            config,
            config_path,
            runtime,
            endpoints: Mutex::new(HashMap::new()),
            tokens: auth::TokenCache::default(),
            credentials: Mutex::new(HashMap::new()),
            pending_uploads: Mutex::new(HashMap::new()),
        })
    }

    /// The registries config in use.
    pub fn config(&self) -> &RegistriesConfig {
        &self.config
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    pub(crate) fn docker_config_dir(&self) -> Option<PathBuf> {
        self.opts.docker_config_dir().ok()
    }

    pub(crate) fn config_path_text(&self) -> String {
        match &self.config_path {
            Some(p) => p.display().to_string(),
            None => format!("${}", config::CONFIG_ENV),
        }
    }

    fn url(&self, call: &Call<'_>, path: &str) -> Result<reqwest::Url, RegistryError> {
        call.ep
            .base
            .join(path)
            .map_err(|_| RegistryError::BadLocation {
                host: call.ep.name.clone(),
                reference: call.reference.clone(),
                location: path.to_string(),
            })
    }

    /// Tries `f` on each pull endpoint (mirrors first); a mirror's failure
    /// moves on to the next, the registry's own is returned.
    fn on_pull_endpoints<T>(
        &self,
        registry: &str,
        mut f: impl FnMut(&Endpoint) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut endpoints = self.pull_endpoints(registry)?;
        // The registry itself is last; mirrors before it may fail.
        let origin = endpoints.pop();
        for ep in &endpoints {
            match f(ep) {
                Ok(v) => return Ok(v),
                Err(e @ RegistryError::DigestMismatch { .. }) => return Err(e),
                Err(_) => continue,
            }
        }
        match origin {
            Some(ep) => f(&ep),
            None => Err(RegistryError::Client("no endpoint for the registry".into())),
        }
    }

    /// A pull request's scope and error context.
    fn pull_call<'a>(ep: &'a Endpoint, r: &Reference) -> Call<'a> {
        Self::call(ep, r, Action::Pull)
    }

    /// A push request's (pull and push scope).
    fn push_call<'a>(ep: &'a Endpoint, r: &Reference) -> Call<'a> {
        Self::call(ep, r, Action::Push)
    }

    fn call<'a>(ep: &'a Endpoint, r: &Reference, action: Action) -> Call<'a> {
        let actions = match action {
            Action::Pull => "pull",
            Action::Push => "pull,push",
        };
        Call {
            ep,
            scopes: vec![auth::scope(&r.repository, actions)],
            action,
            reference: r.familiar(),
            replayable: true,
        }
    }

    /// GET or HEAD of `r`'s manifest, accepting every manifest type.
    fn manifest_request(
        &self,
        call: &Call<'_>,
        r: &Reference,
        method: reqwest::Method,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url(
            call,
            &format!("v2/{}/manifests/{}", r.repository, r.manifest_reference()),
        )?;
        self.send(call, &|c| {
            c.request(method.clone(), url.clone())
                .header(ACCEPT, MANIFEST_ACCEPT)
        })
    }

    /// Fetches a manifest or index by `r`'s digest (when it has one) or
    /// tag, checking its digest against the one asked for (or the
    /// registry's `Docker-Content-Digest`) and its size against
    /// [`MAX_MANIFEST_SIZE`].
    pub fn get_manifest(&self, r: &Reference) -> Result<Fetched, RegistryError> {
        self.on_pull_endpoints(&r.registry, |ep| {
            let call = Self::pull_call(ep, r);
            let resp = self.manifest_request(&call, r, reqwest::Method::GET)?;
            if !resp.status().is_success() {
                return Err(self.status_error(&call, resp, "GET manifest", 1));
            }
            let too_large = || RegistryError::ManifestTooLarge {
                reference: call.reference.clone(),
                host: ep.name.clone(),
                limit: MAX_MANIFEST_SIZE,
            };
            if resp.content_length().is_some_and(|n| n > MAX_MANIFEST_SIZE) {
                return Err(too_large());
            }
            let header_type = content_type(resp.headers());
            let header_digest = header_digest(resp.headers());
            let bytes = self
                .read_limited(&call, resp, MAX_MANIFEST_SIZE)?
                .ok_or_else(too_large)?;
            let digest = Digest::of(&bytes);
            if let Some(expected) = r.digest.or(header_digest) {
                if expected != digest {
                    return Err(RegistryError::DigestMismatch {
                        what: error::Content::Manifest,
                        reference: call.reference.clone(),
                        host: ep.name.clone(),
                        expected,
                        actual: digest,
                    });
                }
            }
            let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|source| {
                RegistryError::ManifestNotJson {
                    reference: call.reference.clone(),
                    host: ep.name.clone(),
                    source,
                }
            })?;
            let media_type = header_type
                .filter(|t| media_type::is_manifest(t) || media_type::is_index(t))
                .or_else(|| {
                    doc.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| {
                    if doc.get("manifests").is_some() {
                        media_type::OCI_INDEX.to_string()
                    } else {
                        media_type::OCI_MANIFEST.to_string()
                    }
                });
            Ok(Fetched {
                bytes,
                media_type,
                digest,
            })
        })
    }

    /// The descriptor `r` resolves to (a HEAD: cheap, and not counted by
    /// Docker Hub's pull limits), or `None` when the registry has no such
    /// tag or digest.
    pub fn head_manifest(&self, r: &Reference) -> Result<Option<Descriptor>, RegistryError> {
        let head = self.on_pull_endpoints(&r.registry, |ep| {
            let call = Self::pull_call(ep, r);
            let resp = self.manifest_request(&call, r, reqwest::Method::HEAD)?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(self.status_error(&call, resp, "HEAD manifest", 1));
            }
            let digest = header_digest(resp.headers()).or(r.digest);
            let media = content_type(resp.headers());
            let size = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            Ok(Some((digest, media, size)))
        })?;
        match head {
            None => Ok(None),
            Some((Some(digest), Some(media), Some(size))) => {
                Ok(Some(Descriptor::new(&media, digest, size)))
            }
            // A registry that leaves something out of its HEAD answer: GET.
            Some(_) => {
                let f = self.get_manifest(r)?;
                Ok(Some(Descriptor::new(
                    &f.media_type,
                    f.digest,
                    f.bytes.len() as u64,
                )))
            }
        }
    }

    /// Reads a response body of at most `limit` bytes; `None` when longer.
    fn read_limited(
        &self,
        call: &Call<'_>,
        mut resp: reqwest::Response,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut out = Vec::new();
        loop {
            let chunk =
                self.block_on(async { tokio::time::timeout(IDLE_TIMEOUT, resp.chunk()).await });
            match chunk {
                Ok(Ok(Some(bytes))) => {
                    out.extend_from_slice(&bytes);
                    if out.len() as u64 > limit {
                        return Ok(None);
                    }
                }
                Ok(Ok(None)) => return Ok(Some(out)),
                Ok(Err(e)) => return Err(self.network_error(&call.ep.name, &call.reference, e)),
                Err(_) => {
                    return Err(RegistryError::Stalled {
                        host: call.ep.name.clone(),
                        reference: call.reference.clone(),
                        seconds: IDLE_TIMEOUT.as_secs(),
                    })
                }
            }
        }
    }

    /// Whether `repo`'s repository holds blob `digest`.
    pub fn blob_exists(&self, repo: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let ep = self.endpoint(&repo.registry)?;
        let call = Self::push_call(&ep, repo);
        let url = self.url(&call, &format!("v2/{}/blobs/{digest}", repo.repository))?;
        let resp = self.send(&call, &|c| c.head(url.clone()))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&call, resp, "HEAD blob", 1)),
        }
    }

    /// Asks the registry to mount blob `digest` from `from`'s repository
    /// into `repo`'s. `true` when mounted (201); `false` when the registry
    /// answered 202 (or `from` is on another registry): upload it instead.
    /// The upload session a 202 opened is kept for [`Registry::put_blob`].
    pub fn mount_blob(
        &self,
        repo: &Reference,
        from: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if from.registry != repo.registry {
            return Ok(false);
        }
        let ep = self.endpoint(&repo.registry)?;
        let mut call = Self::push_call(&ep, repo);
        call.scopes.push(auth::scope(&from.repository, "pull"));
        let mut url = self.url(&call, &format!("v2/{}/blobs/uploads/", repo.repository))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", &from.repository);
        let resp = self.send(&call, &|c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(location) = self.location(&call, &resp) {
                    self.lock_pending().insert(
                        (repo.registry.clone(), repo.repository.clone(), *digest),
                        location,
                    );
                }
                Ok(false)
            }
            _ => Err(self.status_error(&call, resp, "POST blob mount", 1)),
        }
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String, Digest), reqwest::Url>> {
        self.pending_uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The absolute URL of a response's `Location` (registries may answer
    /// a path).
    fn location(
        &self,
        call: &Call<'_>,
        resp: &reqwest::Response,
    ) -> Result<reqwest::Url, RegistryError> {
        let bad = |location: String| RegistryError::BadLocation {
            host: call.ep.name.clone(),
            reference: call.reference.clone(),
            location,
        };
        let value = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .ok_or_else(|| bad(String::new()))?
            .to_str()
            .map_err(|_| bad("<not text>".into()))?;
        resp.url().join(value).map_err(|_| bad(value.to_string()))
    }

    /// Uploads a manifest or index under `r`'s tag (or digest); returns its digest.
    pub fn put_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let ep = self.endpoint(&r.registry)?;
        let call = Self::push_call(&ep, r);
        let digest = Digest::of(bytes);
        let target = match (&r.tag, &r.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => digest.to_string(),
        };
        let url = self.url(&call, &format!("v2/{}/manifests/{target}", r.repository))?;
        let body = bytes.to_vec();
        let resp = self.send(&call, &|c| {
            c.put(url.clone())
                .header(CONTENT_TYPE, media_type)
                .body(body.clone())
        })?;
        if !resp.status().is_success() {
            return Err(self.status_error(&call, resp, "PUT manifest", 1));
        }
        if let Some(theirs) = header_digest(resp.headers()) {
            if theirs != digest {
                return Err(RegistryError::DigestMismatch {
                    what: error::Content::PushedManifest,
                    reference: call.reference.clone(),
                    host: ep.name.clone(),
                    expected: digest,
                    actual: theirs,
                });
            }
        }
        Ok(digest)
    }

    /// Checks `user`/`password` against `host`'s `/v2/` (basic, or through
    /// its token server) without saving anything.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Result<(), RegistryError> {
        let api_host = match host {
            "docker.io" => "registry-1.docker.io",
            other => other,
        };
        let ep = self.probe(host, api_host, self.config.is_insecure(host), None)?;
        let ep = Registry::with_login(
            ep,
            Credential::Basic {
                username: user.to_string(),
                password: password.to_string(),
            },
        );
        self.check_login(&ep)
    }
}

/// A response's media type without parameters.
fn content_type(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let v = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or(v).trim().to_string())
}

/// `Docker-Content-Digest`, when it is a sha256 digest.
fn header_digest(headers: &reqwest::header::HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
