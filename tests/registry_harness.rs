//! Self-tests of the registry harness (tests/support/registry.rs): every
//! mode of the real registry (plain, basic, TLS, token, and basic/token
//! over TLS) takes a push from skopeo and gives it back, refuses what its
//! mode refuses, and is gone after drop; the token issuer grants what it
//! should and counts its requests; the fault proxy injects the faults it
//! counts and forwards the rest byte for byte; the test images and an
//! estiba store push as the layouts they are.

#[path = "support/registry.rs"]
mod registry;
#[path = "support/estiba.rs"]
mod support_estiba;

use base64::Engine;
use registry::http::request;
use registry::{
    layout, skopeo_copy, skopeo_inspect, Auth, FaultProxy, Faults, RegistryServer, TokenPolicy,
};

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
    drop(reg);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry process {pid} still runs after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
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

/// Pushes a one-image layout with skopeo and reads it back: the registry
/// holds the very manifest written.
fn push_and_inspect(reg: &RegistryServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = layout::write_image(dir.path(), "hello", "amd64", b"hello\n").expect("layout");
    reg.push_layout(dir.path(), "hello", "test/hello:v1", false)
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_tail()));
    let info = reg.inspect("test/hello:v1", false).expect("inspect");
    assert_eq!(info["Digest"], img.manifest.to_string(), "{info}");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Layers"][0], img.layer.to_string());
}

#[test]
fn skopeo_pushes_and_reads_back_in_every_mode() {
    for auth in [Auth::None, Auth::basic("tester", "s3cret"), Auth::Tls] {
        let Some(reg) = RegistryServer::start_or_skip(
            "skopeo_pushes_and_reads_back_in_every_mode",
            auth.clone(),
        ) else {
            return;
        };
        push_and_inspect(&reg);
    }
}

#[test]
fn skopeo_pushes_and_reads_back_with_basic_and_token_auth_over_tls() {
    for auth in [
        Auth::basic("tester", "s3cret"),
        Auth::token("tester", "s3cret"),
    ] {
        let Some(reg) = registry::or_skip(
            "skopeo_pushes_and_reads_back_with_basic_and_token_auth_over_tls",
            RegistryServer::start_tls(auth),
        ) else {
            return;
        };
        assert!(reg.url().starts_with("https://"));
        push_and_inspect(&reg);
    }
}

#[test]
fn skopeo_with_a_wrong_password_is_refused() {
    let Some(reg) = RegistryServer::start_or_skip(
        "skopeo_with_a_wrong_password_is_refused",
        Auth::basic("tester", "s3cret"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    layout::write_image(dir.path(), "hello", "amd64", b"hello\n").expect("layout");
    let err = skopeo_copy(
        &format!("oci:{}:hello", dir.path().display()),
        &reg.docker_ref("test/hello:v1"),
        &["--dest-tls-verify=false", "--dest-creds", "tester:wrong"],
    )
    .expect_err("a wrong password is refused");
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let err = reg
        .inspect("test/hello:v1", false)
        .expect_err("nothing was pushed");
    assert!(
        err.contains("manifest unknown") || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn tls_registry_is_refused_without_its_ca() {
    let Some(reg) =
        RegistryServer::start_or_skip("tls_registry_is_refused_without_its_ca", Auth::Tls)
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    layout::write_image(dir.path(), "hello", "amd64", b"hello\n").expect("layout");
    let err = skopeo_copy(
        &format!("oci:{}:hello", dir.path().display()),
        &reg.docker_ref("test/hello:v1"),
        &[],
    )
    .expect_err("an unknown CA is refused");
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn a_multi_platform_index_is_pushed_whole_and_resolves_per_platform() {
    let Some(reg) = RegistryServer::start_or_skip(
        "a_multi_platform_index_is_pushed_whole_and_resolves_per_platform",
        Auth::None,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let index = layout::write_multi_platform(dir.path(), "multi", &["amd64", "arm64", "arm/v7"])
        .expect("layout");
    reg.push_layout(dir.path(), "multi", "test/multi:v1", true)
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_tail()));
    let raw = reg.inspect("test/multi:v1", true).expect("inspect --raw");
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    // Each entry names its platform (variant included) and the manifest
    // written for it.
    let listed: Vec<(String, String)> = raw["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let arch = p["architecture"].as_str().unwrap_or("");
            let platform = match p["variant"].as_str() {
                Some(v) => format!("{arch}/{v}"),
                None => arch.to_owned(),
            };
            (platform, m["digest"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> = index
        .images
        .iter()
        .map(|i| (i.platform.clone(), i.manifest.to_string()))
        .collect();
    assert_eq!(listed, expected);
    // skopeo resolves the index to the platform asked for.
    for (arch, variant) in [("amd64", None), ("arm64", None), ("arm", Some("v7"))] {
        let mut args = vec!["--tls-verify=false", "--override-arch", arch];
        let platform = match variant {
            Some(v) => {
                args.extend(["--override-variant", v]);
                format!("{arch}/{v}")
            }
            None => arch.to_owned(),
        };
        let info = skopeo_inspect(&reg.docker_ref("test/multi:v1"), &args).expect("inspect");
        let image = index.image(&platform).expect("image");
        // ("Digest" is the index's own; the layer tells the images apart.)
        assert_eq!(info["Layers"][0], image.layer.to_string(), "{platform}");
        assert_eq!(info["Architecture"], arch, "{info}");
    }
}

/// Asks the issuer for a token as a client would after a 401: the realm
/// and service from the challenge, `scope`, basic credentials if given.
fn token_for(reg: &RegistryServer, scope: &str, creds: Option<(&str, &str)>) -> (u16, String) {
    let anon = request(&reg.host(), "GET", "/v2/", &[], &[]).expect("GET /v2/");
    assert_eq!(anon.status(), 401);
    let challenge = anon
        .head
        .header("WWW-Authenticate")
        .unwrap_or("")
        .to_owned();
    let issuer = reg.token_issuer().expect("an issuer in token mode");
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{}\"", issuer.realm())),
        "{challenge}"
    );
    assert!(
        challenge.contains("service=\"estiba-test-registry\""),
        "{challenge}"
    );
    let realm = issuer.realm();
    let issuer_host = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token");
    let auth = creds.map(|(u, p)| basic(u, p));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let scope: String = form_urlencoded::byte_serialize(scope.as_bytes()).collect();
    let target = format!("/token?service=estiba-test-registry&scope={scope}");
    let resp = request(issuer_host, "GET", &target, &headers, &[]).expect("GET /token");
    if resp.status() != 200 {
        return (resp.status(), String::new());
    }
    let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("token JSON");
    assert_eq!(json["token"], json["access_token"]);
    assert_eq!(json["expires_in"], issuer.policy().expires_in);
    (200, json["token"].as_str().expect("token").to_owned())
}

/// `GET /v2/REPO/tags/list` with a bearer token.
fn tags_list(reg: &RegistryServer, repo: &str, token: &str) -> registry::http::Response {
    let bearer = format!("Bearer {token}");
    let target = format!("/v2/{repo}/tags/list");
    request(
        &reg.host(),
        "GET",
        &target,
        &[("Authorization", &bearer)],
        &[],
    )
    .expect("GET tags")
}

/// The claims of a JWT, unverified (the registry verifies it).
fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

#[test]
fn token_registry_accepts_the_issuers_tokens_for_what_they_grant() {
    let Some(reg) = RegistryServer::start_or_skip(
        "token_registry_accepts_the_issuers_tokens_for_what_they_grant",
        Auth::token("tester", "s3cret"),
    ) else {
        return;
    };
    push_and_inspect(&reg);
    let issuer = reg.token_issuer().expect("issuer");
    let log = issuer.log();
    assert!(issuer.requests() >= 1, "skopeo never asked the issuer");
    assert!(
        log.iter().any(|r| r.status == 200
            && r.account.as_deref() == Some("tester")
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:test/hello:") && s.contains("push"))),
        "{log:#?}"
    );

    // The raw flow: a pull token for the pushed repository reads it.
    let (status, token) = token_for(
        &reg,
        "repository:test/hello:pull",
        Some(("tester", "s3cret")),
    );
    assert_eq!(status, 200);
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], "estiba-test-issuer");
    assert_eq!(claims["aud"], "estiba-test-registry");
    assert_eq!(claims["sub"], "tester");
    let lifetime = claims["exp"].as_u64().zip(claims["iat"].as_u64());
    assert_eq!(lifetime.map(|(e, i)| e - i), Some(300));
    assert_eq!(
        claims["access"],
        serde_json::json!([{ "type": "repository", "name": "test/hello", "actions": ["pull"] }])
    );
    let tags = tags_list(&reg, "test/hello", &token);
    assert_eq!(tags.status(), 200, "{}", reg.log_tail());
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).expect("tags JSON");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    // That token does not cover another repository.
    let other = tags_list(&reg, "test/other", &token);
    assert_eq!(other.status(), 401);

    // A wrong password gets no token, and skopeo is refused.
    let (status, _) = token_for(
        &reg,
        "repository:test/hello:pull",
        Some(("tester", "wrong")),
    );
    assert_eq!(status, 401);
    let err = skopeo_inspect(
        &reg.docker_ref("test/hello:v1"),
        &["--tls-verify=false", "--creds", "tester:wrong"],
    )
    .expect_err("a wrong password is refused");
    assert!(err.contains("401") || err.contains("nauthorized"), "{err}");
    assert!(issuer.log().iter().any(|r| r.status == 401));
}

#[test]
fn token_registry_lets_anonymous_clients_pull_only_when_allowed() {
    for anonymous_pull in [false, true] {
        let Some(reg) = RegistryServer::start_or_skip(
            "token_registry_lets_anonymous_clients_pull_only_when_allowed",
            Auth::Token(TokenPolicy {
                user: "tester".to_owned(),
                pass: "s3cret".to_owned(),
                anonymous_pull,
                expires_in: 2,
            }),
        ) else {
            return;
        };
        push_and_inspect(&reg);
        let (status, token) = token_for(&reg, "repository:test/hello:pull,push", None);
        assert_eq!(
            status, 200,
            "anonymous clients get a token, maybe an empty one"
        );
        let tags = tags_list(&reg, "test/hello", &token);
        let expected = if anonymous_pull { 200 } else { 401 };
        assert_eq!(tags.status(), expected, "anonymous_pull {anonymous_pull}");
        let last = reg
            .token_issuer()
            .expect("issuer")
            .log()
            .pop()
            .expect("logged");
        let granted = if anonymous_pull {
            serde_json::json!([{ "type": "repository", "name": "test/hello", "actions": ["pull"] }])
        } else {
            serde_json::json!([])
        };
        assert_eq!(last.granted, granted);
        assert_eq!(last.account, None);
        // Anonymous skopeo reads only where anonymous pull is on.
        let read = skopeo_inspect(&reg.docker_ref("test/hello:v1"), &["--tls-verify=false"]);
        assert_eq!(read.is_ok(), anonymous_pull, "{read:?}");
    }
}

/// A registry holding `test/big:v1`, an image with a layer of 256 KiB of
/// noise (so gzip leaves it large); the layout it was pushed from and what
/// was written.
fn registry_with_a_big_image(
    test: &str,
) -> Option<(RegistryServer, tempfile::TempDir, layout::WrittenImage)> {
    let reg = RegistryServer::start_or_skip(test, Auth::None)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = fastrand::Rng::with_seed(7);
    let noise: Vec<u8> = (0..256 * 1024).map(|_| rng.u8(..)).collect();
    let img = layout::write_image(dir.path(), "big", "amd64", &noise).expect("layout");
    reg.push_layout(dir.path(), "big", "test/big:v1", false)
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_tail()));
    Some((reg, dir, img))
}

fn blob_path(layout: &std::path::Path, digest: &estiba_cache::Digest) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.hex())
}

/// The big image's registry with a fault proxy in front of it.
struct Proxied {
    /// Held so the registry lives as long as the proxy.
    _registry: RegistryServer,
    proxy: FaultProxy,
    img: layout::WrittenImage,
    /// The layer blob as pushed.
    blob: Vec<u8>,
    /// `/v2/test/big/blobs/LAYER`.
    target: String,
}

fn proxied_big_image(test: &str, faults: Faults) -> Option<Proxied> {
    let (reg, dir, img) = registry_with_a_big_image(test)?;
    let blob = std::fs::read(blob_path(dir.path(), &img.layer)).expect("layer blob");
    let proxy = FaultProxy::start(&reg.host(), faults).expect("proxy");
    let target = format!("/v2/test/big/blobs/{}", img.layer);
    Some(Proxied {
        _registry: reg,
        proxy,
        img,
        blob,
        target,
    })
}

#[test]
fn fault_proxy_injects_errors_and_forwards_the_rest_intact() {
    let Some(p) = proxied_big_image(
        "fault_proxy_injects_errors_and_forwards_the_rest_intact",
        Faults {
            error_rate: 0.5,
            ..Faults::default()
        },
    ) else {
        return;
    };
    let (mut ok, mut failed) = (0u64, 0u64);
    for _ in 0..200 {
        let resp =
            request(&p.proxy.host(), "GET", &p.target, &[], &[]).expect("GET through the proxy");
        match resp.status() {
            200 => {
                assert!(resp.complete);
                assert!(
                    resp.body == p.blob,
                    "a forwarded blob differs from the pushed one"
                );
                ok += 1;
            }
            429 => {
                let after = resp.head.header("Retry-After");
                assert!(matches!(after, Some("0" | "1")), "{after:?}");
                failed += 1;
            }
            500 | 502 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
        if ok >= 3 && failed >= 3 {
            break;
        }
    }
    assert!(
        ok >= 3 && failed >= 3,
        "ok {ok}, injected {failed} (seed {})",
        p.proxy.seed()
    );
    let counts = p.proxy.counts();
    assert_eq!(counts.error_total(), failed, "{counts:?}");
    assert_eq!(counts.forwarded, ok, "{counts:?}");
    assert_eq!(counts.requests, ok + failed, "{counts:?}");
    assert_eq!(counts.cuts, 0);
}

/// Fetches `target` through `host`, resuming with `Range: bytes=N-` after
/// every cut; the body and how many fetches it took.
fn fetch_resuming(host: &str, target: &str) -> (Vec<u8>, u32) {
    let mut body = Vec::new();
    let mut fetches = 0;
    loop {
        fetches += 1;
        assert!(fetches < 10_000, "no progress fetching {target}");
        let range = format!("bytes={}-", body.len());
        let headers: Vec<(&str, &str)> = if body.is_empty() {
            Vec::new()
        } else {
            vec![("Range", range.as_str())]
        };
        let resp = request(host, "GET", target, &headers, &[]).expect("GET through the proxy");
        let expected = if body.is_empty() { 200 } else { 206 };
        assert_eq!(resp.status(), expected, "{:?}", resp.head);
        body.extend_from_slice(&resp.body);
        if resp.complete {
            return (body, fetches);
        }
    }
}

#[test]
fn fault_proxy_cuts_blob_bodies_and_resumed_ranges_add_up_to_the_blob() {
    // Every blob answer is cut, and nothing else is.
    let Some(p) = proxied_big_image(
        "fault_proxy_cuts_blob_bodies_and_resumed_ranges_add_up_to_the_blob",
        Faults {
            cut_rate: 1.0,
            ..Faults::default()
        },
    ) else {
        return;
    };
    let (body, fetches) = fetch_resuming(&p.proxy.host(), &p.target);
    assert!(
        body == p.blob,
        "the resumed blob differs from the pushed one"
    );
    assert!(fetches > 1);
    // Only a 1-byte remainder is left uncut.
    assert_eq!(p.proxy.counts().cuts, u64::from(fetches - 1));
    let manifest = request(
        &p.proxy.host(),
        "GET",
        &format!("/v2/test/big/manifests/{}", p.img.manifest),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
    )
    .expect("GET manifest");
    assert_eq!(manifest.status(), 200);
    assert!(manifest.complete, "a manifest was cut");
    assert_eq!(
        estiba_cache::Digest::of(&manifest.body),
        p.img.manifest,
        "the manifest came through changed"
    );
}

#[test]
fn fault_proxy_forwards_skopeo_uploads_and_downloads_faithfully() {
    let Some(reg) = RegistryServer::start_or_skip(
        "fault_proxy_forwards_skopeo_uploads_and_downloads_faithfully",
        Auth::basic("tester", "s3cret"),
    ) else {
        return;
    };
    let proxy = FaultProxy::start(&reg.host(), Faults::default()).expect("proxy");
    let dir = tempfile::tempdir().expect("tempdir");
    let index =
        layout::write_multi_platform(dir.path(), "multi", &["amd64", "arm64"]).expect("layout");
    let via_proxy = format!("docker://{}/test/multi:v1", proxy.host());
    skopeo_copy(
        &format!("oci:{}:multi", dir.path().display()),
        &via_proxy,
        &[
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds",
            "tester:s3cret",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_tail()));
    // Read back directly from the registry: what went through is whole.
    let raw = reg.inspect("test/multi:v1", true).expect("inspect --raw");
    let digests: Vec<&str> = raw["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    let expected: Vec<String> = index
        .images
        .iter()
        .map(|i| i.manifest.to_string())
        .collect();
    assert_eq!(digests, expected);
    // And a copy back out through the proxy gives the same index.
    let out = tempfile::tempdir().expect("tempdir");
    skopeo_copy(
        &via_proxy,
        &format!("oci:{}:copy", out.path().display()),
        &[
            "--all",
            "--src-tls-verify=false",
            "--src-creds",
            "tester:s3cret",
        ],
    )
    .expect("copy out through the proxy");
    let copied = std::fs::read(blob_path(out.path(), &index.index)).expect("the index came back");
    assert_eq!(estiba_cache::Digest::of(&copied), index.index);
    let counts = proxy.counts();
    assert!(counts.forwarded > 10, "{counts:?}");
    assert_eq!(counts.faults(), 0);
}

#[test]
fn fault_proxy_forwards_a_chunked_upload_and_stops_at_max_faults() {
    let Some(reg) = RegistryServer::start_or_skip(
        "fault_proxy_forwards_a_chunked_upload_and_stops_at_max_faults",
        Auth::None,
    ) else {
        return;
    };
    // Every request fails until two have, then everything goes through.
    let proxy = FaultProxy::start(
        &reg.host(),
        Faults {
            error_rate: 1.0,
            max_faults: Some(2),
            ..Faults::default()
        },
    )
    .expect("proxy");
    let start = "/v2/test/up/blobs/uploads/";
    for _ in 0..2 {
        let resp = request(&proxy.host(), "POST", start, &[], &[]).expect("POST");
        assert!(matches!(resp.status(), 500 | 502 | 429), "{:?}", resp.head);
    }
    let resp = request(&proxy.host(), "POST", start, &[], &[]).expect("POST");
    assert_eq!(resp.status(), 202, "{}", reg.log_tail());
    let location = resp.head.header("Location").expect("an upload location");
    // The registry builds it from the Host header: it names the proxy.
    let path = location
        .strip_prefix(&proxy.url())
        .unwrap_or_else(|| panic!("{location} does not name the proxy {}", proxy.url()));
    let parts: [&[u8]; 3] = [b"first part, ", b"second part, ", b"and the end\n"];
    let resp =
        registry::http::request_chunked(&proxy.host(), "PATCH", path, &[], &parts).expect("PATCH");
    assert_eq!(resp.status(), 202, "{}", reg.log_tail());
    let blob = parts.concat();
    let digest = estiba_cache::Digest::of(&blob);
    let next = resp.head.header("Location").expect("the next location");
    let next = next.strip_prefix(&proxy.url()).unwrap_or(next);
    let sep = if next.contains('?') { '&' } else { '?' };
    let put = format!("{next}{sep}digest={digest}");
    // The proxy answers `Expect: 100-continue` itself.
    let expect = [("Expect", "100-continue")];
    let resp = request(&proxy.host(), "PUT", &put, &expect, &[]).expect("PUT");
    assert_eq!(resp.status(), 201, "{}", reg.log_tail());
    let got = request(
        &reg.host(),
        "GET",
        &format!("/v2/test/up/blobs/{digest}"),
        &[],
        &[],
    )
    .expect("GET blob");
    assert_eq!(got.status(), 200);
    assert!(got.body == blob, "the uploaded blob differs");
    let counts = proxy.counts();
    assert_eq!(counts.error_total(), 2, "{counts:?}");
    assert_eq!(counts.forwarded, 3, "{counts:?}");
}

#[test]
fn an_estiba_store_is_a_push_source() {
    let Some(reg) = RegistryServer::start_or_skip("an_estiba_store_is_a_push_source", Auth::None)
    else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("store");
    let rootfs = work.path().join("rootfs.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&rootfs).expect("rootfs.tar"));
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    tar.append_data(&mut header, "hi.txt", &b"hi\n"[..])
        .expect("tar entry");
    tar.finish().expect("tar");
    let (code, out, err) = support_estiba::run(
        support_estiba::estiba(&root)
            .arg("import")
            .arg(&rootfs)
            .arg("mine:v1"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let tagged = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"] == "docker.io/library/mine:v1"
        })
        .expect("the import is tagged")["digest"]
        .clone();
    reg.push_layout(&root, "docker.io/library/mine:v1", "test/mine:v1", false)
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_tail()));
    let info = reg.inspect("test/mine:v1", false).expect("inspect");
    assert_eq!(info["Digest"], tagged);
}

#[test]
fn token_issuer_answers_the_oauth2_password_grant() {
    let Some(reg) = RegistryServer::start_or_skip(
        "token_issuer_answers_the_oauth2_password_grant",
        Auth::token("tester", "s3cret"),
    ) else {
        return;
    };
    push_and_inspect(&reg);
    let issuer = reg.token_issuer().expect("issuer");
    let before = issuer.requests();
    let realm = issuer.realm();
    let host = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token");
    let form = |pass: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "password")
            .append_pair("service", "estiba-test-registry")
            .append_pair("client_id", "estiba-tests")
            .append_pair("username", "tester")
            .append_pair("password", pass)
            .append_pair("scope", "repository:test/hello:pull")
            .finish()
    };
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let resp = request(host, "POST", "/token", &[ctype], form("s3cret").as_bytes()).expect("POST");
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON");
    let token = json["access_token"].as_str().expect("access_token");
    assert_eq!(tags_list(&reg, "test/hello", token).status(), 200);
    let resp = request(host, "POST", "/token", &[ctype], form("wrong").as_bytes()).expect("POST");
    assert_eq!(resp.status(), 401);
    assert_eq!(issuer.requests(), before + 2);
    let log = issuer.log();
    let last_two: Vec<(&str, u16)> = log[log.len() - 2..]
        .iter()
        .map(|r| (r.method.as_str(), r.status))
        .collect();
    assert_eq!(last_two, [("POST", 200), ("POST", 401)]);
}

#[test]
fn fault_proxy_corrupts_blob_bodies_keeping_their_length() {
    let Some(p) = proxied_big_image(
        "fault_proxy_corrupts_blob_bodies_keeping_their_length",
        Faults {
            corrupt_rate: 1.0,
            ..Faults::default()
        },
    ) else {
        return;
    };
    let resp = request(&p.proxy.host(), "GET", &p.target, &[], &[]).expect("GET through the proxy");
    assert_eq!(resp.status(), 200);
    assert!(resp.complete);
    assert_eq!(resp.body.len(), p.blob.len());
    let differing = resp
        .body
        .iter()
        .zip(&p.blob)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 1, "one byte is flipped");
    assert_ne!(estiba_cache::Digest::of(&resp.body), p.img.layer);
    let counts = p.proxy.counts();
    assert_eq!((counts.corruptions, counts.cuts), (1, 0), "{counts:?}");
}

#[test]
fn a_damaged_stored_blob_is_served_as_it_is() {
    let Some((reg, _dir, img)) =
        registry_with_a_big_image("a_damaged_stored_blob_is_served_as_it_is")
    else {
        return;
    };
    let path = reg.blob_data_path(&img.layer.to_string());
    let mut bytes = std::fs::read(&path).expect("the stored blob");
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage it");
    let target = format!("/v2/test/big/blobs/{}", img.layer);
    let resp = request(&reg.host(), "GET", &target, &[], &[]).expect("GET");
    assert_eq!(resp.status(), 200);
    assert!(resp.body == bytes, "the registry serves the damaged bytes");
}

#[test]
fn docker_config_holds_the_registry_credentials() {
    let Some(reg) = RegistryServer::start_or_skip(
        "docker_config_holds_the_registry_credentials",
        Auth::basic("tester", "s3cret"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = reg.write_docker_config(dir.path()).expect("config.json");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
    let auth = config["auths"][reg.host()]["auth"].as_str().expect("auth");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .expect("base64");
    assert_eq!(decoded, b"tester:s3cret");
    // skopeo reads the same file (as an auth file) and gets in with it.
    let layout_dir = tempfile::tempdir().expect("tempdir");
    layout::write_image(layout_dir.path(), "hello", "amd64", b"hello\n").expect("layout");
    skopeo_copy(
        &format!("oci:{}:hello", layout_dir.path().display()),
        &reg.docker_ref("test/hello:v1"),
        &[
            "--dest-tls-verify=false",
            "--dest-authfile",
            &path.to_string_lossy(),
        ],
    )
    .expect("push with the config's credentials");
}

#[test]
fn a_docker_manifest_list_is_pushed_with_format_v2s2() {
    let Some(reg) = RegistryServer::start_or_skip(
        "a_docker_manifest_list_is_pushed_with_format_v2s2",
        Auth::None,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    layout::write_multi_platform(dir.path(), "multi", &["amd64", "arm64"]).expect("layout");
    reg.push_layout_with(
        dir.path(),
        "multi",
        "test/list:v1",
        &["--all", "--format", "v2s2"],
    )
    .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_tail()));
    let raw = reg.inspect("test/list:v1", true).expect("inspect --raw");
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let entries = raw["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2);
    for (entry, arch) in entries.iter().zip(["amd64", "arm64"]) {
        assert_eq!(
            entry["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(entry["platform"]["architecture"], arch);
        let digest = entry["digest"].as_str().expect("digest");
        let info = reg
            .inspect(&format!("test/list@{digest}"), false)
            .expect("inspect");
        assert_eq!(info["Architecture"], arch);
    }
}
