//! estiba's registries config: which registries may be spoken to over
//! plain http (or with an unverified certificate) and which mirrors serve
//! Docker Hub pulls. The keys are docker's `daemon.json` names, so a
//! docker user's settings copy over as they are:
//!
//! ```json
//! {"insecure-registries": ["registry.lan:5000", "10.0.0.0/8"],
//!  "registry-mirrors": ["https://mirror.example"]}
//! ```
//!
//! The file is `$ESTIBA_REGISTRIES_CONFIG`, else
//! `/etc/estiba/registries.json` for root and
//! `$XDG_CONFIG_HOME/estiba/registries.json` (or `~/.config/…`) for
//! others. A missing file is an empty config.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "ESTIBA_REGISTRIES_CONFIG";

/// The parsed config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RegistriesConfig {
    /// `host[:port]` or CIDR ranges that may use http or unverified TLS
    /// (loopback registries may use http without being listed).
    #[serde(rename = "insecure-registries", default)]
    pub insecure_registries: Vec<String>,
    /// Mirrors tried first for docker.io pulls (`https://mirror.example`).
    #[serde(rename = "registry-mirrors", default)]
    pub registry_mirrors: Vec<String>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading it failed.
    #[error("cannot read the registries config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not the JSON described above.
    #[error("invalid registries config {path}: expected {{\"insecure-registries\": [...], \"registry-mirrors\": [...]}}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A mirror is not an http(s) URL.
    #[error("invalid registries config {path}: registry mirror {mirror:?} is not an http:// or https:// URL")]
    Mirror {
        /// The file.
        path: PathBuf,
        /// The entry.
        mirror: String,
    },
}

/// The default config file path (see the module doc).
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if crate::rootless::for_host_root() {
        return Some(PathBuf::from("/etc/estiba/registries.json"));
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(config_home.join("estiba/registries.json"))
}

impl RegistriesConfig {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let config: RegistriesConfig =
            serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(mirror) = config.registry_mirrors.iter().find(|m| {
            reqwest::Url::parse(m).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        }) {
            return Err(ConfigError::Mirror {
                path: path.to_path_buf(),
                mirror: mirror.clone(),
            });
        }
        Ok(config)
    }

    /// Whether `registry` (`host[:port]`) may be spoken to over plain http
    /// when https fails: loopback registries (as docker treats them) and
    /// those listed.
    pub fn allows_http(&self, registry: &str) -> bool {
        let host = host_of(registry);
        host == "localhost"
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || self.is_listed_insecure(registry)
    }

    /// Whether `registry` is listed in `insecure-registries` (by name or
    /// CIDR range): its certificate is then not verified either, as docker
    /// does for the registries listed there.
    pub fn is_listed_insecure(&self, registry: &str) -> bool {
        let host = host_of(registry);
        let ip = host.parse::<IpAddr>().ok();
        self.insecure_registries.iter().any(|entry| {
            let entry = entry
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            if entry == registry || entry == host {
                return true;
            }
            match (entry.split_once('/'), ip) {
                (Some((net, bits)), Some(ip)) => in_cidr(ip, net, bits),
                _ => false,
            }
        })
    }
}

/// The host of `host[:port]` (brackets of an IPv6 address removed).
pub(crate) fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether `ip` is in `net/bits`.
fn in_cidr(ip: IpAddr, net: &str, bits: &str) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    let shift = width - bits;
    shift >= 128 || (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dockers_key_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registries.json");
        assert_eq!(
            RegistriesConfig::load(&path).expect("missing is empty"),
            RegistriesConfig::default()
        );
        std::fs::write(
            &path,
            r#"{"insecure-registries": ["registry.lan:5000", "10.0.0.0/8", "http://plain.lan"],
                "registry-mirrors": ["https://mirror.example"], "debug": true}"#,
        )
        .expect("write");
        let c = RegistriesConfig::load(&path).expect("valid");
        assert_eq!(
            c.registry_mirrors,
            vec!["https://mirror.example".to_string()]
        );
        for (registry, http, listed) in [
            ("registry.lan:5000", true, true),
            ("registry.lan:5001", false, false),
            ("registry.lan", false, false),
            ("plain.lan", true, true),
            ("10.1.2.3:5000", true, true),
            ("11.1.2.3:5000", false, false),
            ("localhost:5000", true, false),
            ("127.0.0.5:80", true, false),
            ("[::1]:5000", true, false),
            ("ghcr.io", false, false),
        ] {
            assert_eq!(c.allows_http(registry), http, "{registry}");
            assert_eq!(c.is_listed_insecure(registry), listed, "{registry}");
        }
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registries.json");
        std::fs::write(&path, r#"{"insecure-registries": "not-a-list"}"#).expect("write");
        let err = RegistriesConfig::load(&path).expect_err("malformed");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::write(&path, r#"{"registry-mirrors": ["mirror.example"]}"#).expect("write");
        let err = RegistriesConfig::load(&path).expect_err("not a URL");
        assert!(err.to_string().contains("mirror.example"), "{err}");
    }
}
