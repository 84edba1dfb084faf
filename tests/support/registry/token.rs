//! The token issuer of a registry in token mode (distribution's
//! `auth: token`, as its token spec describes): a small HTTP server on a
//! loopback port, in a thread, that answers `GET /token?service=…&scope=…`
//! (and the OAuth2 `POST /token` with `grant_type=password`) with
//! `{"token", "access_token", "expires_in"}`.
//!
//! The JWT is ES256-signed (jsonwebtoken) with a key whose self-signed
//! certificate is the registry's `rootcertbundle` and travels in the
//! header's `x5c`, which is how distribution 2.8 finds the key. Claims:
//! `iss`, `sub`, `aud` (the service), `exp`, `nbf`, `iat`, `jti`, and
//! `access`: what the `scope` parameters asked, granted in full to the one
//! user with the right password, `pull` only to anonymous clients when
//! `anonymous_pull` is set, and nothing otherwise. A wrong password gets
//! 401. Every request is counted and logged, so tests can check that a
//! client caches its tokens and refreshes them after `expires_in`.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::certs::CertFiles;
use super::http;

/// The `service` the registry names in its challenge and the token's `aud`.
pub(crate) const SERVICE: &str = "estiba-test-registry";
/// The token's `iss`, which the registry checks.
pub(crate) const ISSUER: &str = "estiba-test-issuer";
/// How long a connection may stay silent before the issuer drops it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may have what, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenPolicy {
    /// The one user.
    pub(crate) user: String,
    /// Its password.
    pub(crate) pass: String,
    /// Whether clients without credentials get `pull` on every repository.
    pub(crate) anonymous_pull: bool,
    /// The tokens' lifetime in seconds (`expires_in`, and `exp - iat`).
    /// A short one makes a client refresh (count the issuer's requests);
    /// a registry-side rejection of an expired token is not something to
    /// wait for (distribution allows clock-skew leeway past `exp`), and
    /// docker's own client treats anything under 60 s as 60 s.
    pub(crate) expires_in: u64,
}

/// One request the issuer answered.
#[derive(Debug, Clone)]
pub(crate) struct TokenRequest {
    /// `GET` or `POST`.
    pub(crate) method: String,
    /// The user named by the credentials, `None` when anonymous.
    pub(crate) account: Option<String>,
    /// The `scope` parameters, as sent (decoded).
    pub(crate) scopes: Vec<String>,
    /// The answer's status: 200, 401 (wrong password), 400, 404.
    pub(crate) status: u16,
    /// The `access` claim granted (empty unless 200).
    pub(crate) granted: serde_json::Value,
}

/// A running token issuer; stopped on drop.
#[derive(Debug)]
pub(crate) struct TokenIssuer {
    server: http::LoopbackServer,
    state: Arc<State>,
}

struct State {
    policy: TokenPolicy,
    key: jsonwebtoken::EncodingKey,
    x5c: String,
    requests: AtomicU64,
    log: Mutex<Vec<TokenRequest>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("policy", &self.policy)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Starts an issuer signing with `signer` (its key and certificate) on
    /// a free loopback port.
    pub(crate) fn start(policy: TokenPolicy, signer: &CertFiles) -> Result<TokenIssuer, String> {
        let key_pem = std::fs::read(&signer.key)
            .map_err(|e| format!("reading {}: {e}", signer.key.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&key_pem)
            .map_err(|e| format!("loading the token signing key: {e}"))?;
        let cert_pem = std::fs::read_to_string(&signer.cert)
            .map_err(|e| format!("reading {}: {e}", signer.cert.display()))?;
        // x5c carries the DER, base64 (standard): the PEM body, unwrapped.
        let x5c: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let state = Arc::new(State {
            policy,
            key,
            x5c,
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let server = {
            let state = Arc::clone(&state);
            http::LoopbackServer::start("the token issuer", move |conn| {
                let _ = serve(&state, conn);
            })?
        };
        Ok(TokenIssuer { server, state })
    }

    /// The realm URL the registry sends clients to.
    pub(crate) fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.server.port())
    }

    /// How many requests it has answered (any status).
    pub(crate) fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every request answered so far, in order.
    pub(crate) fn log(&self) -> Vec<TokenRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Its policy.
    pub(crate) fn policy(&self) -> &TokenPolicy {
        &self.state.policy
    }
}

/// The `access` claim entry.
#[derive(serde::Serialize, Debug, Clone)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(serde::Serialize, Debug)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

/// Answers one request on `conn`, then closes it.
fn serve(state: &State, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut r = BufReader::new(&conn);
    let Some(head) = http::read_head(&mut r)? else {
        return Ok(());
    };
    let mut body = Vec::new();
    http::copy_body(&head, &mut r, &mut body)?;
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (status, json) = answer(state, &head, &body);
    let mut w = &conn;
    let bytes = json.to_string();
    let mut extra = String::new();
    if status == 401 {
        extra.push_str("WWW-Authenticate: Basic realm=\"estiba-test\"\r\n");
    }
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{bytes}",
        reason(status),
        bytes.len()
    )?;
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    }
}

/// The status and JSON body for a token request; logs it.
fn answer(state: &State, head: &http::Head, body: &[u8]) -> (u16, serde_json::Value) {
    let method = head.method().to_owned();
    let target = head.target();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // GET: everything in the query; POST: an urlencoded form (OAuth2).
    let params: Vec<(String, String)> = match method.as_str() {
        "GET" => form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        _ => form_urlencoded::parse(body).into_owned().collect(),
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let credentials = match method.as_str() {
        "POST" if param("grant_type").as_deref() == Some("password") => {
            param("username").zip(param("password"))
        }
        _ => head.header("authorization").and_then(basic_credentials),
    };
    let mut record = TokenRequest {
        method: method.clone(),
        account: credentials.as_ref().map(|(u, _)| u.clone()),
        scopes: scopes.clone(),
        status: 200,
        granted: serde_json::json!([]),
    };
    let result = if path != "/token" || !matches!(method.as_str(), "GET" | "POST") {
        Err((404, "no such endpoint"))
    } else if method == "POST" && param("grant_type").as_deref() != Some("password") {
        // Refresh tokens are not issued; docker-style clients then use GET.
        Err((404, "only grant_type=password is supported"))
    } else if param("service").is_some_and(|s| s != SERVICE) {
        Err((400, "unknown service"))
    } else {
        match &credentials {
            Some((u, p)) if *u != state.policy.user || *p != state.policy.pass => {
                Err((401, "wrong user name or password"))
            }
            _ => Ok(()),
        }
    };
    let reply = match result {
        Err((status, message)) => {
            record.status = status;
            (
                status,
                serde_json::json!({ "errors": [{ "code": "UNAUTHORIZED", "message": message }] }),
            )
        }
        Ok(()) => {
            let access = grant(&state.policy, credentials.is_some(), &scopes);
            record.granted = serde_json::to_value(&access).unwrap_or_default();
            match sign(state, record.account.clone().unwrap_or_default(), access) {
                Ok(token) => (
                    200,
                    serde_json::json!({
                        "token": token,
                        "access_token": token,
                        "expires_in": state.policy.expires_in,
                    }),
                ),
                Err(e) => {
                    record.status = 400;
                    (400, serde_json::json!({ "errors": [{ "message": e }] }))
                }
            }
        }
    };
    state
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
    reply
}

/// `Basic BASE64(user:pass)` → (user, pass).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let b64 = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// What each `type:name:actions` scope gets: everything asked for the
/// authenticated user, `pull` for anonymous clients when allowed.
fn grant(policy: &TokenPolicy, authenticated: bool, scopes: &[String]) -> Vec<Access> {
    scopes
        .iter()
        .filter_map(|scope| {
            // The name may not hold ':' in a repository scope, but a
            // resource type may carry a class: "repository(plugin)".
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let asked = actions.split(',').filter(|a| !a.is_empty());
            let actions: Vec<String> = if authenticated {
                asked.map(str::to_owned).collect()
            } else if policy.anonymous_pull && kind == "repository" {
                asked.filter(|a| *a == "pull").map(str::to_owned).collect()
            } else {
                Vec::new()
            };
            Some(Access {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions,
            })
        })
        .filter(|a| !a.actions.is_empty())
        .collect()
}

/// A signed JWT for `sub` with `access`.
fn sign(state: &State, sub: String, access: Vec<Access>) -> Result<String, String> {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("reading the clock: {e}"))?
        .as_secs();
    let claims = Claims {
        iss: ISSUER.to_owned(),
        sub,
        aud: SERVICE.to_owned(),
        exp: now + state.policy.expires_in,
        nbf: now,
        iat: now,
        jti: format!(
            "{}-{}-{}",
            std::process::id(),
            now,
            JTI.fetch_add(1, Ordering::SeqCst)
        ),
        access,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![state.x5c.clone()]);
    jsonwebtoken::encode(&header, &claims, &state.key).map_err(|e| format!("signing a token: {e}"))
}
