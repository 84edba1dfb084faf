//! Image references as docker reads them (distribution/reference's
//! grammar): `busybox` means `docker.io/library/busybox:latest`,
//! `localhost:5000/app` keeps its registry, `name@sha256:…` pins a digest,
//! `name:tag@sha256:…` keeps both (the digest wins when fetching).
//!
//! The store tags images by their full normalized name; users see the
//! familiar short form, as `docker images` shows it.

use estiba_cache::Digest;

/// The registry docker assumes.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The longest repository name (with its registry) docker accepts.
const MAX_NAME_LEN: usize = 255;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `ghcr.io`.
    pub registry: String,
    /// `library/busybox`, `org/app`.
    pub repository: String,
    /// `latest` when none was given and no digest was.
    pub tag: Option<String>,
    /// `@sha256:…`.
    pub digest: Option<Digest>,
}

/// A string that is no image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// What was given.
    pub reference: String,
    /// Why it is not one.
    pub reason: &'static str,
}

impl Reference {
    /// Parses and normalizes a reference.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let bad = |reason| ReferenceError {
            reference: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest is not sha256:<64 hex digits>"))?,
                ),
            ),
            None => (text, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad(
                    "the tag may hold only letters, digits, '_', '.' and '-' (at most 128, not starting with '.' or '-')",
                ));
            }
        }
        if name.is_empty() {
            return Err(bad("the repository name is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("the repository name is longer than 255 characters"));
        }
        // docker's rule: the first component is a registry when it holds a
        // '.' or a ':', is `localhost`, or has upper-case letters.
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                if !valid_registry(first) {
                    return Err(bad(
                        "the registry must be a host name or IP address with an optional :port",
                    ));
                }
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if registry == DEFAULT_REGISTRY
            && repository.len() == 64
            && repository.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(bad(
                "a 64-character hexadecimal string is an image ID, not a repository name",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(bad(
                "repository names use lower-case letters and digits, with components separated by '/' and words by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same repository at another tag or digest: what a manifest's
    /// blobs and children are fetched by.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// What a manifest request names: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `docker.io/library/busybox` (no tag or digest).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The repository as docker shows it: `busybox`, `org/app`,
    /// `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        }
    }

    /// The familiar form with tag and digest: `busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_name();
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(&d.to_string());
        }
        out
    }
}

impl std::fmt::Display for Reference {
    /// The full normalized form, as stored: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A registry: host name components (letters, digits, inner '-') joined
/// by '.', or a bracketed IPv6 address, then an optional `:port`.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(after) = registry.strip_prefix('[') {
        match after.split_once(']') {
            Some((ip, rest)) => {
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match rest {
                    "" => return true,
                    _ => match rest.strip_prefix(':') {
                        Some(port) => ("", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
    let host_ok = registry.starts_with('[')
        || host.split('.').all(|c| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        });
    port_ok && host_ok
}

/// A path component: `[a-z0-9]+` words joined by `.`, `_`, `__` or `-`+.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !word(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reference;

    #[test]
    fn normalizes_like_docker() {
        let r = Reference::parse("busybox").expect("valid");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        let r = Reference::parse("localhost:5000/team/app:1.2").expect("valid");
        assert_eq!(r.to_string(), "localhost:5000/team/app:1.2");
        assert_eq!(r.familiar_name(), "localhost:5000/team/app");
        let r = Reference::parse("org/app").expect("valid");
        assert_eq!(r.to_string(), "docker.io/org/app:latest");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("alpine@{d}")).expect("valid");
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{d}"));
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("app:bad tag").is_err());
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("app@sha256:zz").is_err());
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_names_as_docker_does() {
        let with_digest = format!("host.example/ns/x@{D}");
        let tag_and_digest = format!("node:14@{D}");
        let cases: &[(&str, String)] = &[
            ("node:14", "docker.io/library/node:14".to_string()),
            (
                "docker.io/node",
                "docker.io/library/node:latest".to_string(),
            ),
            (
                "index.docker.io/library/node:14",
                "docker.io/library/node:14".to_string(),
            ),
            ("docker.io/org/app", "docker.io/org/app:latest".to_string()),
            ("localhost/x", "localhost/x:latest".to_string()),
            ("localhost:5000/x", "localhost:5000/x:latest".to_string()),
            (
                "127.0.0.1:5000/a/b/c:v1.0-rc_1",
                "127.0.0.1:5000/a/b/c:v1.0-rc_1".to_string(),
            ),
            ("[::1]:5000/x:1", "[::1]:5000/x:1".to_string()),
            (
                "ghcr.io/a__b/c-d--e/f.g",
                "ghcr.io/a__b/c-d--e/f.g:latest".to_string(),
            ),
            (&with_digest, format!("host.example/ns/x@{D}")),
            (&tag_and_digest, format!("docker.io/library/node:14@{D}")),
        ];
        for (input, want) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&r.to_string(), want, "{input}");
        }
        let r = Reference::parse(&tag_and_digest).expect("valid");
        assert_eq!(r.tag.as_deref(), Some("14"));
        assert_eq!(r.manifest_reference(), D, "the digest wins over the tag");
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        let hex = "a".repeat(64);
        let long = format!("x/{}", "a".repeat(260));
        let long_tag = format!("app:{}", "t".repeat(129));
        let cases: &[(&str, &str)] = &[
            ("Node:14", "must be lowercase"),
            ("org/App", "must be lowercase"),
            ("localhost:5000/App", "must be lowercase"),
            ("a___b", "separated by"),
            ("a..b", "separated by"),
            ("-app", "separated by"),
            ("app-", "separated by"),
            ("a//b", "separated by"),
            ("app:-x", "the tag"),
            (&long_tag, "the tag"),
            ("app:", "the tag"),
            (&hex, "image ID"),
            (&long, "longer than 255"),
            ("bad_host.example/x", "registry"),
            ("host:port/x", "registry"),
            (":14", "empty"),
            ("app@sha256:12", "digest"),
        ];
        for (input, reason) in cases {
            let err = Reference::parse(input).expect_err(input);
            assert!(
                err.to_string().contains(reason),
                "{input}: {err} should say {reason:?}"
            );
        }
    }
}
