//! Registry authentication as the distribution spec describes it: the
//! `WWW-Authenticate` challenge a registry answers `/v2/` with (none,
//! `Basic realm=…`, or `Bearer realm=…,service=…,scope=…`), the token
//! request to the realm, and the cache of tokens per (registry, scope).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a registry wants to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Authorization: Basic base64(user:password)`.
    Basic,
    /// A token from `realm`, for `service`.
    Bearer {
        /// The token server URL.
        realm: String,
        /// The `service` parameter to send it.
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. `None` for schemes we do
/// not speak or a bearer challenge without a realm.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
    })
}

/// `key=value` and `key="quoted, value"` pairs separated by commas.
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
}

/// The token server's answer (distribution's token spec; OAuth2 servers
/// say `access_token`).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds; the spec's default is 60.
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and when to stop using it (a little before it expires).
    pub(crate) fn into_token(self, now: Instant) -> Option<Token> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        // Renew at 90% of the lifetime so a token never expires mid-request.
        Some(Token {
            value,
            renew_at: now + lifetime.mul_f64(0.9),
        })
    }
}

/// A bearer token.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) renew_at: Instant,
}

/// The scope of a repository for `actions` (`pull` or `pull,push`).
pub(crate) fn scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

/// Tokens by (registry endpoint, scopes).
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    tokens: std::sync::Mutex<HashMap<(String, Vec<String>), Token>>,
}

impl TokenCache {
    /// A token still good at `now`.
    pub(crate) fn get(&self, registry: &str, scopes: &[String], now: Instant) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(&(registry.to_string(), scopes.to_vec()))
            .filter(|t| t.renew_at > now)
            .map(|t| t.value.clone())
    }

    pub(crate) fn put(&self, registry: &str, scopes: &[String], token: Token) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert((registry.to_string(), scopes.to_vec()), token);
    }

    /// Forgets a token the registry refused.
    pub(crate) fn forget(&self, registry: &str, scopes: &[String]) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(&(registry.to_string(), scopes.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/node:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t , error="invalid_token""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer service="a\"b", realm="r""#),
            Some(Challenge::Bearer {
                realm: "r".into(),
                service: Some("a\"b".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn tokens_expire_early_and_accept_both_names() {
        let now = Instant::now();
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":100}"#).expect("json");
        let t = t.into_token(now).expect("token");
        assert_eq!(t.value, "a");
        assert_eq!(t.renew_at, now + Duration::from_secs(90));
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"b","access_token":"c"}"#).expect("json");
        let t = t.into_token(now).expect("token");
        assert_eq!(t.value, "b");
        assert_eq!(t.renew_at, now + Duration::from_secs(54));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).expect("json");
        assert!(t.into_token(now).is_none());

        let cache = TokenCache::default();
        let scopes = vec![scope("a/b", "pull")];
        cache.put(
            "r",
            &scopes,
            Token {
                value: "x".into(),
                renew_at: now + Duration::from_secs(5),
            },
        );
        assert_eq!(cache.get("r", &scopes, now).as_deref(), Some("x"));
        assert_eq!(cache.get("r", &[scope("a/b", "pull,push")], now), None);
        assert_eq!(
            cache.get("r", &scopes, now + Duration::from_secs(6)),
            None,
            "expired"
        );
        cache.forget("r", &scopes);
        assert_eq!(cache.get("r", &scopes, now), None);
    }
}
