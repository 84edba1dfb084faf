//! The HTTP side of the client: one `reqwest` client per registry (with
//! the registry's CA and client certificate from the certs directory), the
//! scheme probe (https, then http for insecure registries), authorization
//! headers from the challenge, and retries with backoff for 5xx, 429 and
//! dropped connections.

use super::auth::{self, Challenge};
use super::credentials::Credential;
use super::error::{Action, RegistryError};
use super::Registry;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a TCP + TLS connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay silent (no response headers, no body
/// bytes, no upload progress) before it counts as dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries per request (the first one included).
pub const MAX_ATTEMPTS: u32 = 5;
/// The first backoff; it doubles each retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest backoff between two tries, and the most of a 429's
/// `Retry-After` we honour.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A registry as spoken to: its base URL, client and current challenge.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The name credentials and certificates are looked up by, and errors
    /// show: `docker.io`, `localhost:5000`, a mirror's `host[:port]`.
    pub(crate) name: String,
    /// `https://registry-1.docker.io/`.
    pub(crate) base: Url,
    pub(crate) client: Client,
    challenge: Mutex<Option<Challenge>>,
    /// Credentials given to `login`, used instead of the config file's.
    login: Option<Credential>,
}

/// What a request is for, for auth scopes and error messages.
pub(crate) struct Call<'a> {
    pub(crate) ep: &'a Endpoint,
    pub(crate) scopes: Vec<String>,
    pub(crate) action: Action,
    /// The image or repository, as errors name it.
    pub(crate) reference: String,
}

impl Registry {
    /// The endpoint for `registry` (`docker.io`, `host:port`), probed once.
    pub(crate) fn endpoint(&self, registry: &str) -> Result<Arc<Endpoint>, RegistryError> {
        if let Some(ep) = self.lock_endpoints().get(registry) {
            return Ok(ep.clone());
        }
        let api_host = match registry {
            "docker.io" => "registry-1.docker.io",
            other => other,
        };
        let ep = self.probe(registry, api_host, None)?;
        let ep = Arc::new(ep);
        self.lock_endpoints()
            .insert(registry.to_string(), ep.clone());
        Ok(ep)
    }

    /// A mirror's endpoint, or `None` when it cannot be reached (a mirror
    /// that is down is skipped, as dockerd does).
    pub(crate) fn mirror_endpoint(&self, mirror: &str) -> Option<Arc<Endpoint>> {
        let key = format!("mirror {mirror}");
        if let Some(ep) = self.lock_endpoints().get(&key) {
            return Some(ep.clone());
        }
        let url = Url::parse(mirror).ok()?;
        let host = url.host_str()?;
        let name = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let ep = Arc::new(self.probe(&name, &name, Some(url.scheme())).ok()?);
        self.lock_endpoints().insert(key, ep.clone());
        Some(ep)
    }

    fn lock_endpoints(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<Endpoint>>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds the scheme `registry` answers `/v2/` on, and its challenge:
    /// https, then http when the config allows it and https failed for
    /// another reason than an untrusted certificate.
    pub(crate) fn probe(
        &self,
        name: &str,
        api_host: &str,
        only_scheme: Option<&str>,
    ) -> Result<Endpoint, RegistryError> {
        let client = self.client_for(name, self.config.is_listed_insecure(name))?;
        let schemes: Vec<&str> = match only_scheme {
            Some(s) => vec![s],
            None if self.config.allows_http(name) => vec!["https", "http"],
            None => vec!["https"],
        };
        let mut first_err = None;
        for scheme in schemes {
            let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|_| {
                RegistryError::BadLocation {
                    host: name.to_string(),
                    reference: name.to_string(),
                    location: format!("{scheme}://{api_host}/"),
                }
            })?;
            let url = base.join("v2/").map_err(|_| RegistryError::BadLocation {
                host: name.to_string(),
                reference: name.to_string(),
                location: base.to_string(),
            })?;
            let answer = self.block_on(async {
                tokio::time::timeout(IDLE_TIMEOUT, client.get(url).send()).await
            });
            match answer {
                // An https server answering plain http (Go's says 400):
                // the https error is the one to report.
                Ok(Ok(resp))
                    if scheme == "http"
                        && first_err.is_some()
                        && resp.status() == StatusCode::BAD_REQUEST => {}
                Ok(Ok(resp)) => {
                    let challenge = challenge_of(resp.headers());
                    return Ok(Endpoint {
                        name: name.to_string(),
                        base,
                        client,
                        challenge: Mutex::new(challenge),
                        login: None,
                    });
                }
                Ok(Err(e)) => {
                    let err = self.network_error(name, name, e);
                    if matches!(err, RegistryError::UnknownCa { .. }) {
                        return Err(err);
                    }
                    if first_err.is_none() {
                        first_err = Some(err);
                    }
                }
                Err(_) => {
                    if first_err.is_none() {
                        first_err = Some(RegistryError::Stalled {
                            host: name.to_string(),
                            reference: name.to_string(),
                            seconds: IDLE_TIMEOUT.as_secs(),
                        });
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| RegistryError::Client("no scheme to try".into())))
    }

    /// An endpoint that authenticates with `credential` instead of the
    /// docker config's (for `login`).
    pub(crate) fn with_login(ep: Endpoint, credential: Credential) -> Endpoint {
        Endpoint {
            login: Some(credential),
            ..ep
        }
    }

    /// A client trusting the system roots plus `certs_dir/NAME/*.crt`, with
    /// the client certificate `*.cert` + `*.key` there, as docker reads them.
    fn client_for(&self, name: &str, skip_verify: bool) -> Result<Client, RegistryError> {
        let mut builder = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("estiba/", env!("CARGO_PKG_VERSION")))
            .tcp_keepalive(Duration::from_secs(30))
            .danger_accept_invalid_certs(skip_verify);
        let dir = self.opts.certs_dir.join(name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let tls_err =
                    |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::TlsFile {
                        path: path.clone(),
                        source,
                    };
                match path.extension().and_then(|e| e.to_str()) {
                    Some("crt") => {
                        let pem = std::fs::read(&path).map_err(|e| tls_err(e.into()))?;
                        for cert in reqwest::Certificate::from_pem_bundle(&pem)
                            .map_err(|e| tls_err(e.into()))?
                        {
                            builder = builder.add_root_certificate(cert);
                        }
                    }
                    Some("cert") => {
                        let key_path = path.with_extension("key");
                        let mut pem = std::fs::read(&path).map_err(|e| tls_err(e.into()))?;
                        let key = std::fs::read(&key_path).map_err(|e| RegistryError::TlsFile {
                            path: key_path.clone(),
                            source: e.into(),
                        })?;
                        pem.push(b'\n');
                        pem.extend_from_slice(&key);
                        let identity =
                            reqwest::Identity::from_pem(&pem).map_err(|e| tls_err(e.into()))?;
                        builder = builder.identity(identity);
                    }
                    _ => {}
                }
            }
        }
        builder.build().map_err(|e| RegistryError::Client(e.into()))
    }

    /// Sends a request built by `make` (again for each try, so its body
    /// must be in memory: blob uploads use `send_streamed`) with
    /// authorization, answering a 401 by authenticating again once and
    /// retrying transient failures. Returns any other answer for the
    /// caller to read; 5xx and 429 that outlast the retries are errors.
    pub(crate) fn send(
        &self,
        call: &Call<'_>,
        make: &dyn Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let auth = self.authorization(call, refreshed)?;
            let mut req = make(&call.ep.client);
            if let Some(auth) = auth {
                req = req.header(AUTHORIZATION, auth);
            }
            let answer =
                self.block_on(async { tokio::time::timeout(IDLE_TIMEOUT, req.send()).await });
            let may_retry = attempt < MAX_ATTEMPTS;
            let resp = match answer {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    let err = self.network_error(&call.ep.name, &call.reference, e);
                    if may_retry && err.is_transient() {
                        std::thread::sleep(backoff(attempt));
                        continue;
                    }
                    return Err(err);
                }
                Err(_) => {
                    let err = RegistryError::Stalled {
                        host: call.ep.name.clone(),
                        reference: call.reference.clone(),
                        seconds: IDLE_TIMEOUT.as_secs(),
                    };
                    if may_retry {
                        std::thread::sleep(backoff(attempt));
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                if let Some(c) = challenge_of(resp.headers()) {
                    *call.ep.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                }
                self.tokens.forget(&call.ep.name, &call.scopes);
                refreshed = true;
                attempt -= 1;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS || is_retryable_5xx(status) {
                if may_retry {
                    let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                    std::thread::sleep(wait.min(BACKOFF_CAP));
                    continue;
                }
                return Err(self.status_error(call, resp, "request", attempt));
            }
            return Ok(resp);
        }
    }

    /// The error for an answer we cannot go on from.
    pub(crate) fn status_error(
        &self,
        call: &Call<'_>,
        resp: Response,
        what: &'static str,
        attempts: u32,
    ) -> RegistryError {
        let host = call.ep.name.clone();
        let reference = call.reference.clone();
        let action = call.action;
        match resp.status().as_u16() {
            401 => RegistryError::Unauthorized {
                action,
                reference,
                host,
            },
            403 => RegistryError::Denied {
                action,
                reference,
                host,
            },
            404 => RegistryError::NotFound { reference, host },
            429 => RegistryError::TooManyRequests {
                reference,
                host,
                attempts,
            },
            s if (500..600).contains(&s) => RegistryError::ServerError {
                status: s,
                reference,
                host,
                attempts,
            },
            status => {
                let body = self
                    .block_on(async { tokio::time::timeout(IDLE_TIMEOUT, resp.text()).await })
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                RegistryError::UnexpectedStatus {
                    status,
                    what,
                    reference,
                    host,
                    body: body
                        .chars()
                        .take(300)
                        .collect::<String>()
                        .trim()
                        .to_string(),
                }
            }
        }
    }

    /// Sorts a transport error into what a user can act on.
    pub(crate) fn network_error(
        &self,
        host: &str,
        reference: &str,
        e: reqwest::Error,
    ) -> RegistryError {
        let chain = chain_for_matching(&e);
        if chain.contains("invalid peer certificate") || chain.contains("UnknownIssuer") {
            return RegistryError::UnknownCa {
                host: host.to_string(),
                certs_dir: self.opts.certs_dir.clone(),
                config: self.config_path_text(),
                source: e,
            };
        }
        if e.is_connect() && chain.contains("Connection refused") {
            return RegistryError::ConnectionRefused {
                host: host.to_string(),
                source: e,
            };
        }
        RegistryError::Network {
            host: host.to_string(),
            reference: reference.to_string(),
            source: e,
        }
    }

    /// The `Authorization` header for `call`: none, basic, or a bearer token
    /// for its scopes (fetched when missing, expired or refused).
    pub(crate) fn authorization(
        &self,
        call: &Call<'_>,
        refresh: bool,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = call
            .ep
            .challenge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        let credential = self.credential(call.ep)?;
        match challenge {
            Challenge::Basic => Ok(match credential {
                Some(Credential::Basic { username, password }) => {
                    Some(basic_header(&username, &password))
                }
                _ => None,
            }),
            Challenge::Bearer { realm, service } => {
                let now = Instant::now();
                if !refresh {
                    if let Some(t) = self.tokens.get(&call.ep.name, &call.scopes, now) {
                        return Ok(Some(bearer_header(&t)));
                    }
                }
                let token = self
                    .fetch_token(
                        call.ep,
                        &realm,
                        service.as_deref(),
                        &call.scopes,
                        credential.as_ref(),
                    )
                    .map_err(|e| match e {
                        // Refused (with the stored credentials or none):
                        // say which image and how to log in.
                        RegistryError::Unauthorized { .. } | RegistryError::LoginFailed { .. } => {
                            RegistryError::Unauthorized {
                                action: call.action,
                                reference: call.reference.clone(),
                                host: call.ep.name.clone(),
                            }
                        }
                        e => e,
                    })?;
                let value = token.value.clone();
                self.tokens.put(&call.ep.name, &call.scopes, token);
                Ok(Some(bearer_header(&value)))
            }
        }
    }

    /// The credentials for an endpoint: those given to `login`, else the
    /// docker config's (read once per registry).
    fn credential(&self, ep: &Endpoint) -> Result<Option<Credential>, RegistryError> {
        if let Some(c) = &ep.login {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = self
            .credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ep.name)
        {
            return Ok(c.clone());
        }
        let found = match self.docker_config_dir() {
            Some(dir) => super::credentials::get(&dir, &ep.name)?,
            None => None,
        };
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ep.name.clone(), found.clone());
        Ok(found)
    }

    /// A token from the realm: GET with service and scopes (basic auth
    /// when we have credentials), or an OAuth2 POST with an identity token.
    pub(crate) fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<auth::Token, RegistryError> {
        let token_err = |reason: String| RegistryError::Token {
            host: ep.name.clone(),
            realm: realm.to_string(),
            reason,
        };
        let url =
            Url::parse(realm).map_err(|e| token_err(format!("the realm is not a URL ({e})")))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = match credential {
                Some(Credential::IdentityToken(refresh)) => {
                    let mut form: Vec<(&str, &str)> = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh),
                        ("client_id", "estiba"),
                    ];
                    if let Some(s) = service {
                        form.push(("service", s));
                    }
                    let scope = scopes.join(" ");
                    if !scope.is_empty() {
                        form.push(("scope", &scope));
                    }
                    ep.client.post(url.clone()).form(&form)
                }
                other => {
                    let mut u = url.clone();
                    {
                        let mut q = u.query_pairs_mut();
                        if let Some(s) = service {
                            q.append_pair("service", s);
                        }
                        for s in scopes {
                            q.append_pair("scope", s);
                        }
                    }
                    let mut req = ep.client.get(u);
                    if let Some(Credential::Basic { username, password }) = other {
                        req = req.header(AUTHORIZATION, basic_header(username, password));
                    }
                    req
                }
            };
            let answer = self.block_on(async {
                tokio::time::timeout(IDLE_TIMEOUT, async {
                    let resp = req.send().await?;
                    let status = resp.status();
                    let bytes = resp.bytes().await?;
                    Ok::<_, reqwest::Error>((status, bytes))
                })
                .await
            });
            let (status, bytes) = match answer {
                Ok(Ok(x)) => x,
                Ok(Err(e)) if attempt < MAX_ATTEMPTS && !e.is_builder() => {
                    std::thread::sleep(backoff(attempt));
                    continue;
                }
                Ok(Err(e)) => return Err(self.network_error(&ep.name, realm, e)),
                Err(_) if attempt < MAX_ATTEMPTS => continue,
                Err(_) => return Err(token_err("it sent nothing".into())),
            };
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                && attempt < MAX_ATTEMPTS
            {
                std::thread::sleep(backoff(attempt));
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(match credential {
                    Some(_) => RegistryError::LoginFailed {
                        host: ep.name.clone(),
                    },
                    None => RegistryError::Unauthorized {
                        action: if scopes.iter().any(|s| s.ends_with("push")) {
                            Action::Push
                        } else {
                            Action::Pull
                        },
                        reference: scopes.join(" "),
                        host: ep.name.clone(),
                    },
                });
            }
            if !status.is_success() {
                return Err(token_err(format!("HTTP {status}")));
            }
            let parsed: auth::TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| token_err(format!("the answer is not token JSON ({e})")))?;
            return parsed
                .into_token(Instant::now())
                .ok_or_else(|| token_err("the answer holds no token".into()));
        }
    }

    /// Checks credentials against `/v2/` of `ep`: basic directly, bearer
    /// through the token server.
    pub(crate) fn check_login(&self, ep: &Endpoint) -> Result<(), RegistryError> {
        let challenge = ep
            .challenge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let credential = self.credential(ep)?;
        let auth = match (challenge, credential.as_ref()) {
            (None, _) => return Ok(()),
            (Some(Challenge::Basic), Some(Credential::Basic { username, password })) => {
                basic_header(username, password)
            }
            (Some(Challenge::Basic), _) => {
                return Err(RegistryError::LoginFailed {
                    host: ep.name.clone(),
                })
            }
            (Some(Challenge::Bearer { realm, service }), _) => {
                let t =
                    self.fetch_token(ep, &realm, service.as_deref(), &[], credential.as_ref())?;
                bearer_header(&t.value)
            }
        };
        let url = ep
            .base
            .join("v2/")
            .map_err(|_| RegistryError::BadLocation {
                host: ep.name.clone(),
                reference: ep.name.clone(),
                location: ep.base.to_string(),
            })?;
        let answer = self.block_on(async {
            tokio::time::timeout(
                IDLE_TIMEOUT,
                ep.client.get(url).header(AUTHORIZATION, auth).send(),
            )
            .await
        });
        match answer {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) if resp.status() == StatusCode::UNAUTHORIZED => {
                Err(RegistryError::LoginFailed {
                    host: ep.name.clone(),
                })
            }
            Ok(Ok(resp)) => Err(RegistryError::UnexpectedStatus {
                status: resp.status().as_u16(),
                what: "GET /v2/",
                reference: ep.name.clone(),
                host: ep.name.clone(),
                body: String::new(),
            }),
            Ok(Err(e)) => Err(self.network_error(&ep.name, &ep.name, e)),
            Err(_) => Err(RegistryError::Stalled {
                host: ep.name.clone(),
                reference: ep.name.clone(),
                seconds: IDLE_TIMEOUT.as_secs(),
            }),
        }
    }
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// The challenge of a response, if it has one we speak.
fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::parse_challenge)
}

fn is_retryable_5xx(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// A 429/503's `Retry-After` in seconds (HTTP dates are rare from
/// registries; they fall back to our backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(BACKOFF_CAP))
}

/// The wait before try `attempt + 1`: doubling from the base, capped, with
/// up to a quarter of jitter so parallel downloads do not retry in step.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(BACKOFF_CAP);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    capped + capped.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// The error's causes with their Debug forms too, for telling kinds of
/// network failure apart (rustls names an unknown issuer only in its Debug
/// form); not for users, who get `solve::error_chain`.
fn chain_for_matching(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        out.push_str(&format!(" {s:?}"));
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let first = backoff(1);
        assert!(
            first >= BACKOFF_BASE && first <= BACKOFF_BASE.mul_f64(1.25),
            "{first:?}"
        );
        let third = backoff(3);
        assert!(
            third >= BACKOFF_BASE * 4 && third <= (BACKOFF_BASE * 4).mul_f64(1.25),
            "{third:?}"
        );
        let late = backoff(40);
        assert!(
            late >= BACKOFF_CAP && late <= BACKOFF_CAP.mul_f64(1.25),
            "{late:?}"
        );
    }

    #[test]
    fn retry_after_is_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h), Some(BACKOFF_CAP));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
