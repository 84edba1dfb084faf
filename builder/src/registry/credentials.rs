//! Registry credentials in docker's `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker`), read and written as the docker CLI does, so `docker
//! login` and `estiba login` share them: `auths` entries (base64
//! `user:password` or an `identitytoken`), per-registry `credHelpers` and
//! the `credsStore` helper (`docker-credential-NAME get|store|erase`).
//! Reading goes through the `docker_credential` crate; writing keeps every
//! other key of the file.

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The key docker writes Docker Hub's credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a registry is logged in with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or access token used as one).
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token, as `docker login` stores for some registries.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    /// Never prints secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// Credentials that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The docker config file cannot be read or written.
    #[error("cannot access the docker config {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not JSON (or not an object).
    #[error("invalid docker config {path}: it is not a JSON object")]
    Parse {
        /// The file.
        path: PathBuf,
    },
    /// Reading the credentials for a registry failed.
    #[error("cannot read the credentials for {registry} from {path}: {reason}")]
    Read {
        /// The registry.
        registry: String,
        /// The file.
        path: PathBuf,
        /// What `docker_credential` reported.
        reason: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} failed to {action} credentials for {registry}: {stderr}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// `store` or `erase`.
        action: &'static str,
        /// The registry.
        registry: String,
        /// What it printed.
        stderr: String,
    },
    /// A credential helper could not be run.
    #[error("cannot run credential helper docker-credential-{helper}")]
    HelperSpawn {
        /// The helper's name.
        helper: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No home directory and no `$DOCKER_CONFIG`.
    #[error("cannot find the docker config directory: set DOCKER_CONFIG or HOME")]
    NoDir,
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
pub fn default_dir() -> Result<PathBuf, CredentialsError> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".docker"))
        .ok_or(CredentialsError::NoDir)
}

/// The key a registry's credentials are stored under.
pub fn server_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
        other => other.to_string(),
    }
}

/// The credentials for `registry` in `dir`'s config.json, if any.
pub fn get(dir: &Path, registry: &str) -> Result<Option<Credential>, CredentialsError> {
    let path = dir.join("config.json");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CredentialsError::Io { path, source }),
    };
    let key = server_key(registry);
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), &key) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(t)) => Ok(Some(Credential::IdentityToken(t))),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(e) => Err(CredentialsError::Read {
            registry: registry.to_string(),
            path,
            reason: e.to_string(),
        }),
    }
}

/// Saves `username`/`password` for `registry` as `docker login` does:
/// through the registry's helper or the `credsStore` when one is set
/// (leaving an empty `auths` entry), else base64 in `auths`.
pub fn store(
    dir: &Path,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<(), CredentialsError> {
    let path = dir.join("config.json");
    let mut config = read_object(&path)?;
    let key = server_key(registry);
    let entry = match helper_for(&config, &key) {
        Some(helper) => {
            let input =
                serde_json::json!({"ServerURL": key, "Username": username, "Secret": password});
            run_helper(&helper, "store", registry, &input.to_string())?;
            serde_json::json!({})
        }
        None => {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            serde_json::json!({ "auth": auth })
        }
    };
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    if let Some(map) = auths.as_object_mut() {
        map.insert(key, entry);
    }
    write_object(dir, &path, &config)
}

/// Forgets `registry`'s credentials (`docker logout`); false when there
/// were none in the file.
pub fn erase(dir: &Path, registry: &str) -> Result<bool, CredentialsError> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Ok(false);
    }
    let mut config = read_object(&path)?;
    let key = server_key(registry);
    if let Some(helper) = helper_for(&config, &key) {
        run_helper(&helper, "erase", registry, &key)?;
    }
    let removed = config
        .get_mut("auths")
        .and_then(|a| a.as_object_mut())
        .and_then(|a| a.remove(&key))
        .is_some();
    if removed {
        write_object(dir, &path, &config)?;
    }
    Ok(removed)
}

/// The helper that holds `key`'s credentials: `credHelpers[key]`, else `credsStore`.
fn helper_for(config: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    config
        .get("credHelpers")
        .and_then(|h| h.get(key))
        .or_else(|| config.get("credsStore"))
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

fn run_helper(
    helper: &str,
    action: &'static str,
    registry: &str,
    input: &str,
) -> Result<(), CredentialsError> {
    let spawn_err = |source| CredentialsError::HelperSpawn {
        helper: helper.to_string(),
        source,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(CredentialsError::Helper {
        helper: helper.to_string(),
        action,
        registry: registry.to_string(),
        stderr,
    })
}

fn read_object(
    path: &Path,
) -> Result<serde_json::Map<String, serde_json::Value>, CredentialsError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(serde_json::Map::new()),
        Err(source) => {
            return Err(CredentialsError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(CredentialsError::Parse {
            path: path.to_path_buf(),
        }),
    }
}

/// Writes the config as docker does: 0600, through a temp file renamed into place.
fn write_object(
    dir: &Path,
    path: &Path,
    config: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), CredentialsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let mut text = serde_json::to_vec_pretty(config).map_err(|e| io(e.into()))?;
    text.push(b'\n');
    tmp.write_all(&text).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn store_get_erase_round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"other.example": {"auth": "YTpi"}}, "psFormat": "table {{.ID}}", "proxies": {"default": {}}}"#,
        )
        .expect("write");
        assert_eq!(get(dir.path(), "localhost:5000").expect("reads"), None);
        store(dir.path(), "localhost:5000", "user", "pa:ss").expect("stores");
        store(dir.path(), "docker.io", "hub", "secret").expect("stores");
        assert_eq!(
            get(dir.path(), "localhost:5000").expect("reads"),
            basic("user", "pa:ss")
        );
        assert_eq!(
            get(dir.path(), "docker.io").expect("reads"),
            basic("hub", "secret")
        );
        assert_eq!(
            get(dir.path(), "other.example").expect("reads"),
            basic("a", "b")
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(json["psFormat"], "table {{.ID}}");
        assert_eq!(json["auths"][DOCKER_HUB_KEY]["auth"], "aHViOnNlY3JldA==");
        assert_eq!(json["auths"]["localhost:5000"]["auth"], "dXNlcjpwYTpzcw==");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        assert!(erase(dir.path(), "localhost:5000").expect("erases"));
        assert!(!erase(dir.path(), "localhost:5000").expect("nothing left"));
        assert_eq!(get(dir.path(), "localhost:5000").expect("reads"), None);
        assert_eq!(
            get(dir.path(), "docker.io").expect("reads"),
            basic("hub", "secret")
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(json["proxies"], serde_json::json!({"default": {}}));
    }

    #[test]
    fn reads_identity_tokens_and_starts_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("new");
        assert_eq!(get(&missing, "ghcr.io").expect("no file"), None);
        store(&missing, "ghcr.io", "u", "p").expect("creates the dir and file");
        assert_eq!(get(&missing, "ghcr.io").expect("reads"), basic("u", "p"));
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"registry.example": {"auth": "dTpw", "identitytoken": "refresh"}}}"#,
        )
        .expect("write");
        assert_eq!(
            get(dir.path(), "registry.example").expect("reads"),
            Some(Credential::IdentityToken("refresh".into()))
        );
        std::fs::write(dir.path().join("config.json"), "[1]").expect("write");
        let err = store(dir.path(), "x.example", "u", "p").expect_err("not an object");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
