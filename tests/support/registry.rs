//! A real registry for tests (DESIGN.md, "Real components for tests"):
//! Debian's `docker-registry` (distribution v2.8) on `127.0.0.1:<free
//! port>`, with its config, storage, certificates and log in a temporary
//! directory, in one of the auth modes of [`Auth`]; plus what registry
//! tests need around it. One include gives all of it:
//!
//! ```ignore
//! #[path = "support/registry.rs"]
//! mod registry;
//! use registry::{Auth, FaultProxy, Faults, RegistryServer};
//!
//! let Some(reg) = RegistryServer::start_or_skip("my_test", Auth::None) else { return };
//! ```
//!
//! - [`RegistryServer`]: `start(Auth)` / `start_or_skip(test, Auth)` (fails
//!   in CI, prints `skipped:` elsewhere), `start_tls(Auth)` for basic or
//!   token auth over https, [`or_skip`]. Accessors: `host()`
//!   (`127.0.0.1:PORT`), `url()`, `ca_file()` and `certs_dir()` (TLS:
//!   `DIR/127.0.0.1:PORT/ca.crt`, `DIR/localhost:PORT/ca.crt`),
//!   `credentials()`, `token_issuer()`, `log_tail()`, `storage_dir()`,
//!   `blob_data_path(digest)` (to damage a stored blob), `pid()`,
//!   `docker_config_json()` / `write_docker_config(dir)` (`auths` as
//!   `docker login` writes them). With skopeo: `push_layout(dir, name, repo_ref, all)`,
//!   `inspect(repo_ref, raw)`, `skopeo_args(prefix)`, `docker_ref(repo_ref)`.
//! - [`Auth`]: `None`, `Basic{user,pass}` (htpasswd, bcrypt), `Tls` (https
//!   with a CA made here), `Token(TokenPolicy)` (distribution's `auth:
//!   token` with the [`TokenIssuer`] of `token.rs`: request count and log,
//!   `anonymous_pull`, `expires_in`).
//! - [`FaultProxy`]: `start(upstream_host, Faults{error_rate, statuses,
//!   cut_rate, corrupt_rate, max_faults, seed})` in front of a plain-http registry;
//!   `host()`, `url()`, `seed()`, `counts()` ([`FaultCounts`]).
//! - [`layout`]: `write_image`, `write_multi_platform` (OCI layouts made of
//!   plain files, with their digests).
//! - [`skopeo_copy`], [`skopeo_inspect`], [`skopeo`]: the reference client.
//! - [`http`]: `request`, `request_chunked` (a raw one-request client that
//!   reports a cut body as incomplete), message parsing.
//!
//! Dropping a server stops the process this harness started, by its PID
//! (SIGTERM, a grace period, then SIGKILL), and removes the directory, also
//! when the test fails. The child also gets SIGKILL if the thread that
//! started it dies first (`PR_SET_PDEATHSIG`), so keep a server inside the
//! test that started it rather than in a static shared across test threads.

// Each test file that includes the harness uses a part of it.
#![allow(dead_code)]
// The harness says on stderr what it started (the fault proxy's seed).
#![allow(clippy::print_stderr)]

#[path = "registry/certs.rs"]
mod certs;
#[path = "child.rs"]
mod child;
#[path = "ci.rs"]
mod ci;
#[path = "registry/fault_proxy.rs"]
mod fault_proxy;
#[path = "registry/http.rs"]
pub(crate) mod http;
#[path = "registry/layout.rs"]
pub(crate) mod layout;
#[path = "registry/skopeo.rs"]
mod skopeo;
#[path = "registry/token.rs"]
pub(crate) mod token;

// Each test file that includes the harness uses a part of it.
#[allow(unused_imports)]
pub(crate) use fault_proxy::{FaultCounts, FaultProxy, Faults, SEED_VAR};
#[allow(unused_imports)]
pub(crate) use skopeo::{skopeo, skopeo_copy, skopeo_inspect};
#[allow(unused_imports)]
pub(crate) use token::{TokenIssuer, TokenPolicy, TokenRequest};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where Debian's docker-registry package installs the registry.
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry gets to answer `/v2/` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the registry gets to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports are tried when another process takes the first.
const PORT_ATTEMPTS: usize = 5;
/// The htpasswd and token realm name.
pub(crate) const REALM: &str = "estiba-test";

/// How clients must authenticate to the registry, and whether it speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// Plain http, anonymous: anyone pulls and pushes.
    None,
    /// htpasswd basic auth (bcrypt, made by `htpasswd -B`), over plain
    /// http (or https with [`RegistryServer::start_tls`]).
    Basic {
        /// The one user.
        user: String,
        /// Its password.
        pass: String,
    },
    /// https with a server certificate for `127.0.0.1` and `localhost`
    /// signed by a CA made for this server ([`RegistryServer::ca_file`]),
    /// anonymous.
    Tls,
    /// distribution's `auth: token`, over plain http (or https with
    /// [`RegistryServer::start_tls`]): clients get a bearer
    /// token from a [`TokenIssuer`] the harness runs
    /// ([`RegistryServer::token_issuer`]).
    Token(TokenPolicy),
}

impl Auth {
    /// `Auth::Basic` for `user`/`pass`.
    pub(crate) fn basic(user: &str, pass: &str) -> Auth {
        Auth::Basic {
            user: user.to_owned(),
            pass: pass.to_owned(),
        }
    }

    /// `Auth::Token` for `user`/`pass`: no anonymous pull, tokens valid
    /// for 300 s.
    pub(crate) fn token(user: &str, pass: &str) -> Auth {
        Auth::Token(TokenPolicy {
            user: user.to_owned(),
            pass: pass.to_owned(),
            anonymous_pull: false,
            expires_in: 300,
        })
    }
}

/// A running `docker-registry` this process started; stopped and removed on
/// drop.
#[derive(Debug)]
pub(crate) struct RegistryServer {
    child: Child,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    auth: Auth,
    tls: Option<Tls>,
    issuer: Option<TokenIssuer>,
}

/// The TLS material of a server started with [`Auth::Tls`].
#[derive(Debug)]
struct Tls {
    ca: PathBuf,
    certs_dir: PathBuf,
}

impl RegistryServer {
    /// Starts a registry, or says why it cannot: in CI that panics (CI must
    /// run the test); elsewhere it prints `skipped: TEST: …` and returns
    /// `None`.
    pub(crate) fn start_or_skip(test: &str, auth: Auth) -> Option<RegistryServer> {
        or_skip(test, RegistryServer::start(auth))
    }

    /// Starts a registry in mode `auth` on a free loopback port and waits
    /// until `/v2/` answers.
    pub(crate) fn start(auth: Auth) -> Result<RegistryServer, String> {
        let tls = auth == Auth::Tls;
        RegistryServer::start_with(auth, tls)
    }

    /// [`RegistryServer::start`] with https whatever the mode: basic or
    /// token auth over TLS, as real registries run. (The token issuer
    /// itself stays plain http on loopback.)
    pub(crate) fn start_tls(auth: Auth) -> Result<RegistryServer, String> {
        RegistryServer::start_with(auth, true)
    }

    fn start_with(auth: Auth, tls: bool) -> Result<RegistryServer, String> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(format!(
                "no registry at {REGISTRY_BIN} (Debian's docker-registry: scripts/test-deps installs it)"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("estiba-registry-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let root = dir.path().to_path_buf();
        let mut issuer = None;
        let auth_config = match &auth {
            Auth::None | Auth::Tls => serde_json::json!({}),
            Auth::Basic { user, pass } => {
                let path = root.join("htpasswd");
                write_htpasswd(&path, user, pass)?;
                serde_json::json!({ "htpasswd": { "realm": REALM, "path": path } })
            }
            Auth::Token(policy) => {
                let dir = root.join("token");
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let signer = certs::self_signed(&dir, "signer", token::ISSUER)?;
                let started = TokenIssuer::start(policy.clone(), &signer)?;
                let config = serde_json::json!({ "token": {
                    "realm": started.realm(),
                    "service": token::SERVICE,
                    "issuer": token::ISSUER,
                    "rootcertbundle": signer.cert,
                }});
                issuer = Some(started);
                config
            }
        };
        let tls = if tls { Some(make_tls(&root)?) } else { None };
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut http = serde_json::json!({
                "addr": format!("127.0.0.1:{port}"),
                "secret": format!("estiba-test-{port}-{}", std::process::id()),
            });
            if tls.is_some() {
                http["tls"] = serde_json::json!({
                    "certificate": root.join("tls/server.crt"),
                    "key": root.join("tls/server.key"),
                });
            }
            let config = serde_json::json!({
                "version": "0.1",
                "log": { "level": "info", "formatter": "text" },
                "storage": {
                    "filesystem": { "rootdirectory": root.join("storage") },
                    "delete": { "enabled": true },
                    "maintenance": { "uploadpurging": { "enabled": false } },
                },
                "http": http,
                "health": { "storagedriver": { "enabled": false } },
                "auth": auth_config,
            });
            // distribution reads YAML, and JSON is YAML.
            let config_path = root.join("config.yml");
            std::fs::write(&config_path, config.to_string())
                .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
            let child = spawn(&root, &config_path)?;
            let mut server = RegistryServer {
                child,
                dir: None,
                root: root.clone(),
                port,
                auth: auth.clone(),
                tls: None,
                issuer: None,
            };
            match server.wait_ready() {
                Ok(()) => {
                    server.dir = Some(dir);
                    server.tls = tls;
                    server.issuer = issuer;
                    if let Some(t) = &server.tls {
                        server.lay_out_certs_dir(t)?;
                    }
                    return Ok(server);
                }
                // Dropping `server` stops the child; its directory stays.
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// `127.0.0.1:PORT`, as image references name the registry.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry process's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding config, storage, certificates and
    /// log (removed on drop).
    pub(crate) fn dir(&self) -> &Path {
        &self.root
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://…` in TLS mode.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The mode it was started in.
    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Whether it speaks https.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The CA certificate (PEM) a client must trust, in TLS mode.
    pub(crate) fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// A certs.d-style directory, as docker reads `/etc/docker/certs.d`:
    /// `DIR/127.0.0.1:PORT/ca.crt` and `DIR/localhost:PORT/ca.crt`, in TLS
    /// mode.
    pub(crate) fn certs_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.certs_dir.as_path())
    }

    /// The user and password, in the modes that have them.
    pub(crate) fn credentials(&self) -> Option<(&str, &str)> {
        match &self.auth {
            Auth::Basic { user, pass } => Some((user, pass)),
            Auth::Token(policy) => Some((&policy.user, &policy.pass)),
            Auth::None | Auth::Tls => None,
        }
    }

    /// The token issuer, in token mode: its request count and log show
    /// whether a client cached or refreshed its tokens.
    pub(crate) fn token_issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// `docker://127.0.0.1:PORT/REPO_REF` (REPO_REF: `repo:tag`,
    /// `ns/repo@sha256:…`).
    pub(crate) fn docker_ref(&self, repo_ref: &str) -> String {
        format!("docker://{}/{repo_ref}", self.host())
    }

    /// skopeo's options to reach this registry, for `skopeo inspect` and
    /// the like (`prefix` ""), or as the source (`"src-"`) or destination
    /// (`"dest-"`) of `skopeo copy`: the CA in TLS mode, plain http
    /// otherwise, and the credentials where there are some.
    pub(crate) fn skopeo_args(&self, prefix: &str) -> Vec<String> {
        let mut args = match self.certs_dir() {
            Some(dir) => vec![
                format!("--{prefix}cert-dir"),
                dir.join(self.host()).to_string_lossy().into_owned(),
            ],
            None => vec![format!("--{prefix}tls-verify=false")],
        };
        if let Some((user, pass)) = self.credentials() {
            args.push(format!("--{prefix}creds"));
            args.push(format!("{user}:{pass}"));
        }
        args
    }

    /// `skopeo copy --preserve-digests [--all] oci:LAYOUT:NAME
    /// docker://HOST/REPO_REF`: pushes an image (or with `all`, every image
    /// of an index) from an OCI layout, such as an estiba store or one from
    /// [`layout`], as it is: uncompressed layers stay uncompressed (skopeo
    /// would gzip them otherwise), so the registry serves the layout's own
    /// manifest digests.
    pub(crate) fn push_layout(
        &self,
        layout: &Path,
        name: &str,
        repo_ref: &str,
        all: bool,
    ) -> Result<String, String> {
        let extra: &[&str] = if all {
            &["--preserve-digests", "--all"]
        } else {
            &["--preserve-digests"]
        };
        self.push_layout_with(layout, name, repo_ref, extra)
    }

    /// `skopeo copy EXTRA… oci:LAYOUT:NAME docker://HOST/REPO_REF` with
    /// this registry's options: e.g. `["--all", "--format", "v2s2"]` stores
    /// a docker manifest list of docker schema 2 manifests (the digests
    /// change: skopeo converts, and gzips uncompressed layers).
    pub(crate) fn push_layout_with(
        &self,
        layout: &Path,
        name: &str,
        repo_ref: &str,
        extra_args: &[&str],
    ) -> Result<String, String> {
        let mut args = self.skopeo_args("dest-");
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skopeo_copy(
            &format!("oci:{}:{name}", layout.display()),
            &self.docker_ref(repo_ref),
            &args,
        )
    }

    /// `skopeo inspect [--raw] docker://HOST/REPO_REF` with this registry's
    /// options.
    pub(crate) fn inspect(&self, repo_ref: &str, raw: bool) -> Result<serde_json::Value, String> {
        let mut args = self.skopeo_args("");
        if raw {
            args.push("--raw".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skopeo_inspect(&self.docker_ref(repo_ref), &args)
    }

    /// The file holding blob `digest` (`sha256:…`) in the registry's
    /// storage, for tests that damage a blob the registry then serves as it
    /// is (distribution checks digests on upload, not on download).
    pub(crate) fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// A docker client config (`config.json`, as `docker login` writes it)
    /// holding this registry's credentials under `auths."127.0.0.1:PORT"`;
    /// empty `auths` in the modes without credentials.
    pub(crate) fn docker_config_json(&self) -> serde_json::Value {
        use base64::Engine;
        let mut auths = serde_json::Map::new();
        if let Some((user, pass)) = self.credentials() {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            auths.insert(self.host(), serde_json::json!({ "auth": auth }));
        }
        serde_json::json!({ "auths": auths })
    }

    /// Writes [`RegistryServer::docker_config_json`] to `DIR/config.json`
    /// (for `DOCKER_CONFIG=DIR`); the file's path.
    pub(crate) fn write_docker_config(&self, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join("config.json");
        std::fs::write(&path, self.docker_config_json().to_string())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Where the registry keeps its blobs and repositories.
    pub(crate) fn storage_dir(&self) -> PathBuf {
        self.root.join("storage")
    }

    /// The last lines of the registry's log (requests included), for
    /// failure messages.
    pub(crate) fn log_tail(&self) -> String {
        child::log_tail(&self.root.join("registry.log"), 30)
    }

    fn lay_out_certs_dir(&self, tls: &Tls) -> Result<(), String> {
        for host in [self.host(), format!("localhost:{}", self.port)] {
            let d = tls.certs_dir.join(host);
            std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            std::fs::copy(&tls.ca, d.join("ca.crt"))
                .map_err(|e| format!("copying the CA into {}: {e}", d.display()))?;
        }
        Ok(())
    }

    /// Polls `GET /v2/` over plain TCP until any HTTP answer comes back (in
    /// TLS mode Go answers a plaintext request with 400, which is enough to
    /// know it serves).
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "docker-registry exited ({status}) before answering on {}; its log ends:\n{}",
                    self.host(),
                    self.log_tail()
                ));
            }
            if let Ok(resp) = http::request(&self.host(), "GET", "/v2/", &[], &[]) {
                if resp.status() != 0 {
                    return Ok(());
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "docker-registry did not answer on {} within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.host(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        child::stop(&mut self.child, STOP_TIMEOUT);
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            child::remove_dir(dir);
        }
    }
}

/// Runs the registry on `config`, its output into `ROOT/registry.log`, with
/// no `REGISTRY_*` variable from the environment (distribution reads them as
/// config overrides).
fn spawn(root: &Path, config: &Path) -> Result<Child, String> {
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve").arg(config).current_dir(root);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    child::spawn(&mut cmd, &root.join("registry.log"), libc::SIGKILL)
}

/// The server `started`, or `None` after saying why not: in CI that
/// panics (CI must run `test`), elsewhere it prints `skipped: TEST: …`.
/// For `or_skip("t", RegistryServer::start_tls(auth))` and the like.
pub(crate) fn or_skip(
    test: &str,
    started: Result<RegistryServer, String>,
) -> Option<RegistryServer> {
    match started {
        Ok(r) => Some(r),
        Err(why) => {
            ci::skip_or_fail(test, "the test registry (docker-registry)", &why);
            None
        }
    }
}

/// A loopback port nobody listens on right now (another process may take
/// it before the registry binds it: the caller tries again).
pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("binding a loopback port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading a bound port: {e}"))
}

/// `htpasswd -Bbn USER PASS` (bcrypt, the only hash distribution accepts)
/// into `path`.
fn write_htpasswd(path: &Path, user: &str, pass: &str) -> Result<(), String> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .map_err(|e| {
            format!("running htpasswd (apache2-utils; scripts/test-deps installs it): {e}")
        })?;
    if !out.status.success() {
        return Err(format!(
            "htpasswd -Bbn failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::write(path, &out.stdout).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A CA and a server certificate under `ROOT/tls`.
fn make_tls(root: &Path) -> Result<Tls, String> {
    let dir = root.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ca = certs::self_signed(&dir, "ca", "estiba test CA")?;
    certs::server_cert(&dir, &ca)?;
    Ok(Tls {
        ca: ca.cert,
        certs_dir: root.join("certs.d"),
    })
}
