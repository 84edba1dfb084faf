//! The registry client's errors: each names the image or registry and, for
//! what a user can fix, says what to do.

use estiba_cache::Digest;
use std::path::PathBuf;

/// Pull or push: what a failed request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reading manifests and blobs.
    Pull,
    /// Writing them.
    Push,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Pull => "pull",
            Action::Push => "push",
        })
    }
}

/// What kind of content a digest check was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A fetched manifest or index.
    Manifest,
    /// A manifest the registry stored under another digest than ours.
    PushedManifest,
    /// A blob.
    Blob,
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Content::Manifest => "the manifest",
            Content::PushedManifest => "the pushed manifest",
            Content::Blob => "the blob",
        })
    }
}

/// A failed registry operation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401 even with the credentials we have (or with none).
    #[error("not authorized to {action} {reference}: log in with `estiba login {host}`")]
    Unauthorized {
        /// Pull or push.
        action: Action,
        /// The image.
        reference: String,
        /// The registry.
        host: String,
    },
    /// 403.
    #[error("access to {reference} denied by {host}: check that your account may {action} it")]
    Denied {
        /// Pull or push.
        action: Action,
        /// The image.
        reference: String,
        /// The registry.
        host: String,
    },
    /// A manifest 404.
    #[error("{reference} not found in {host} (check the name and tag)")]
    NotFound {
        /// The image.
        reference: String,
        /// The registry.
        host: String,
    },
    /// A blob 404.
    #[error("blob {digest} of {reference} not found in {host}")]
    BlobNotFound {
        /// The blob.
        digest: Digest,
        /// The repository.
        reference: String,
        /// The registry.
        host: String,
    },
    /// 429 after every retry.
    #[error("{host} kept answering 429 (too many requests) for {reference} after {attempts} attempts: wait and try again")]
    TooManyRequests {
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// How many tries were made.
        attempts: u32,
    },
    /// 5xx after every retry.
    #[error("{host} failed with HTTP {status} for {reference} after {attempts} attempts: try again later")]
    ServerError {
        /// The status.
        status: u16,
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// How many tries were made.
        attempts: u32,
    },
    /// Any other answer we cannot go on from.
    #[error("{host} answered HTTP {status} to {what} for {reference}{}", body_suffix(.body))]
    UnexpectedStatus {
        /// The status.
        status: u16,
        /// The request, e.g. `PUT manifest`.
        what: &'static str,
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// The start of the body (registries explain errors there).
        body: String,
    },
    /// The registry's certificate is signed by a CA nobody told us about.
    #[error("cannot verify the TLS certificate of {host}: put its CA in {certs_dir}/{host}/ca.crt, or list {host} in \"insecure-registries\" in {config}")]
    UnknownCa {
        /// The registry.
        host: String,
        /// `/etc/docker/certs.d`.
        certs_dir: PathBuf,
        /// The registries config file.
        config: String,
        /// The TLS error.
        #[source]
        source: reqwest::Error,
    },
    /// Nothing listens there.
    #[error(
        "cannot connect to {host}: connection refused (is the registry running at that address?)"
    )]
    ConnectionRefused {
        /// `host:port`.
        host: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// Any other network failure, after retries.
    #[error("cannot reach {host}{}", for_image(.host, .reference))]
    Network {
        /// The registry.
        host: String,
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The connection went quiet.
    #[error("{host} sent nothing for {seconds} s while serving {reference}")]
    Stalled {
        /// The registry.
        host: String,
        /// The image.
        reference: String,
        /// The inactivity limit.
        seconds: u64,
    },
    /// Content whose digest is not the one asked for.
    #[error("{what} of {reference} from {host} has digest {actual}, expected {expected}: refused")]
    DigestMismatch {
        /// A manifest or a blob.
        what: Content,
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// What was asked for.
        expected: Digest,
        /// What came.
        actual: Digest,
    },
    /// A blob longer or shorter than its descriptor says.
    #[error("blob {digest} of {reference} from {host} is {actual} bytes, its descriptor says {expected}: refused")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// The descriptor's size.
        expected: u64,
        /// What came (so far).
        actual: u64,
    },
    /// A manifest above the size limit.
    #[error("the manifest of {reference} from {host} is larger than {limit} bytes: refused")]
    ManifestTooLarge {
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest that is not JSON.
    #[error("the manifest of {reference} from {host} is not JSON")]
    ManifestNotJson {
        /// The image.
        reference: String,
        /// The registry.
        host: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Login with wrong credentials.
    #[error("login to {host} failed: the user name or password is wrong")]
    LoginFailed {
        /// The registry.
        host: String,
    },
    /// The token server refused or answered nonsense.
    #[error("cannot get a token from {realm} for {host}: {reason}")]
    Token {
        /// The registry.
        host: String,
        /// The token server.
        realm: String,
        /// What went wrong.
        reason: String,
    },
    /// A `Location` we cannot follow.
    #[error("{host} sent an invalid upload location {location:?} for {reference}")]
    BadLocation {
        /// The registry.
        host: String,
        /// The image.
        reference: String,
        /// What it sent.
        location: String,
    },
    /// Writing a downloaded blob failed.
    #[error("cannot write blob {digest} of {reference}")]
    Write {
        /// The blob.
        digest: Digest,
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading a blob to upload failed (or it changed size).
    #[error("cannot read blob {digest} to push to {reference}")]
    Read {
        /// The blob.
        digest: Digest,
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file in the certs directory is unusable.
    #[error("invalid TLS file {path}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTP client or its runtime cannot start.
    #[error("cannot start the HTTP client")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The registries config.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// The docker credentials.
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialsError),
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl RegistryError {
    /// A blob of `repo` that came with digest `actual` instead of
    /// `expected`: what [`Registry::get_blob`](super::Registry::get_blob)
    /// answers, for a caller that hashed the blob itself.
    pub fn blob_digest_mismatch(repo: &super::Reference, expected: Digest, actual: Digest) -> Self {
        RegistryError::DigestMismatch {
            what: Content::Blob,
            reference: repo.familiar(),
            host: repo.registry.clone(),
            expected,
            actual,
        }
    }

    /// The same error, counting `n` tries where it counts them.
    pub(crate) fn after_attempts(self, n: u32) -> Self {
        match self {
            RegistryError::TooManyRequests {
                reference, host, ..
            } => RegistryError::TooManyRequests {
                reference,
                host,
                attempts: n,
            },
            RegistryError::ServerError {
                status,
                reference,
                host,
                ..
            } => RegistryError::ServerError {
                status,
                reference,
                host,
                attempts: n,
            },
            other => other,
        }
    }

    /// Whether another try (with backoff) may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Network { .. }
                | RegistryError::Stalled { .. }
                | RegistryError::ServerError { .. }
                | RegistryError::TooManyRequests { .. }
        )
    }
}

/// ` for IMAGE`, unless the image is only the registry's name (a probe).
fn for_image(host: &str, reference: &str) -> String {
    if reference.is_empty() || reference == host {
        String::new()
    } else {
        format!(" for {reference}")
    }
}
