//! Image references as docker reads them: `busybox` means
//! `docker.io/library/busybox:latest`, `localhost:5000/app` keeps its
//! registry, `name@sha256:…` pins a digest.
//!
//! The store tags images by their full normalized name; users see the
//! familiar short form, as `docker images` shows it.

use estiba_cache::Digest;

/// The registry docker assumes.
pub const DEFAULT_REGISTRY: &str = "docker.io";

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
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(bad(
                    "the tag may hold only letters, digits, '_', '.' and '-'",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
                    || c.starts_with(['.', '_', '-'])
                    || c.ends_with(['.', '_', '-'])
            })
        {
            return Err(bad(
                "repository names use lower-case letters, digits and '.', '_', '-' separators",
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
}
