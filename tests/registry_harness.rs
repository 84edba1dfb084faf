//! Self-tests of the registry harness (tests/support/registry.rs): each
//! mode of the real registry answers as its mode says and is gone after
//! drop.

#[path = "support/registry.rs"]
mod registry;

use base64::Engine;
use registry::http::request;
use registry::{Auth, RegistryServer};

fn basic(user: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {b64}")
}

#[test]
fn plain_registry_answers_v2_and_is_gone_after_drop() {
    let Some(reg) = RegistryServer::start_or_skip(
        "plain_registry_answers_v2_and_is_gone_after_drop",
        Auth::None,
    ) else {
        return;
    };
    assert!(reg.host().starts_with("127.0.0.1:"), "{}", reg.host());
    assert_eq!(reg.url(), format!("http://{}", reg.host()));
    let resp = request(&reg.host(), "GET", "/v2/", &[], &[]).expect("GET /v2/");
    assert_eq!(resp.status(), 200, "{}", reg.log_tail());
    assert_eq!(
        resp.head.header("Docker-Distribution-Api-Version"),
        Some("registry/2.0")
    );
    let pid = reg.pid();
    let dir = reg.dir().to_path_buf();
    let host = reg.host();
    drop(reg);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry process {pid} still runs after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert!(
        request(&host, "GET", "/v2/", &[], &[]).is_err(),
        "{host} still answers after drop"
    );
}

#[test]
fn basic_auth_registry_refuses_anonymous_and_wrong_passwords() {
    let Some(reg) = RegistryServer::start_or_skip(
        "basic_auth_registry_refuses_anonymous_and_wrong_passwords",
        Auth::basic("tester", "s3cret"),
    ) else {
        return;
    };
    assert_eq!(reg.credentials(), Some(("tester", "s3cret")));
    let anon = request(&reg.host(), "GET", "/v2/", &[], &[]).expect("GET /v2/");
    assert_eq!(anon.status(), 401);
    let challenge = anon.head.header("WWW-Authenticate").unwrap_or("");
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let wrong = basic("tester", "nope");
    let resp = request(
        &reg.host(),
        "GET",
        "/v2/",
        &[("Authorization", &wrong)],
        &[],
    )
    .expect("GET /v2/");
    assert_eq!(resp.status(), 401);
    let right = basic("tester", "s3cret");
    let resp = request(
        &reg.host(),
        "GET",
        "/v2/",
        &[("Authorization", &right)],
        &[],
    )
    .expect("GET /v2/");
    assert_eq!(resp.status(), 200, "{}", reg.log_tail());
}

#[test]
fn tls_registry_serves_https_with_a_ca_laid_out_as_certs_d() {
    let Some(reg) = RegistryServer::start_or_skip(
        "tls_registry_serves_https_with_a_ca_laid_out_as_certs_d",
        Auth::Tls,
    ) else {
        return;
    };
    assert_eq!(reg.url(), format!("https://{}", reg.host()));
    let ca = reg.ca_file().expect("a CA in TLS mode");
    let certs = reg.certs_dir().expect("a certs.d in TLS mode");
    let laid_out = certs.join(reg.host()).join("ca.crt");
    assert_eq!(
        std::fs::read(ca).expect("CA"),
        std::fs::read(&laid_out).expect("certs.d CA")
    );
    // A plaintext request to the TLS port gets Go's 400, not an answer.
    let resp = request(&reg.host(), "GET", "/v2/", &[], &[]).expect("GET /v2/");
    assert_eq!(resp.status(), 400);
}
