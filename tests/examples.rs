//! The README's first example, end to end: the seed's Node.js app
//! (`testdata/examples/node-app`) built on a Node.js base made here from the
//! machine's node and npm (`scripts/node-base`: no registry is reachable),
//! its image config checked, then run with `estiba run`: `/health` answers
//! on the host's loopback, the image's own HEALTHCHECK passes inside a
//! container with no network, and npm installs there offline.
//!
//! It needs root (RUN and `estiba run` use namespaces and mounts), node,
//! npm and busybox (`scripts/test-deps` installs them). Without them it
//! prints `skipped: …` and passes; in CI (`CI` set, not `false`/`0`) or with
//! `ESTIBA_REQUIRE_ALL=1` it fails instead.
// A test that cannot run outside CI says so on stderr rather than silently.
#![allow(clippy::print_stderr)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "estiba-node-base:local";
const IMAGE: &str = "mi-aplicacion:latest";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the crate")
        .to_path_buf()
}

#[path = "support/estiba.rs"]
mod support_estiba;
use support_estiba::estiba;

/// Runs a command to its end and returns its stdout; fails the test with
/// both outputs when it does not succeed.
fn ok(cmd: &mut Command) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the command starts");
    let (out, err) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    assert!(
        status.success(),
        "{cmd:?} failed ({status}):\nstdout:\n{out}\nstderr:\n{err}"
    );
    out.into_owned()
}

/// What this test needs and this machine lacks, if anything.
fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("RUN steps and `estiba run` need root".to_owned());
    }
    let on_path = |tool: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let lacking: Vec<&str> = ["node", "npm", "bash", "tar", "ldd"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .chain((!Path::new("/bin/busybox").exists()).then_some("/bin/busybox"))
        .collect();
    (!lacking.is_empty()).then(|| {
        format!(
            "{} missing (scripts/test-deps installs nodejs, npm and busybox-static)",
            lacking.join(", ")
        )
    })
}

/// Fails in CI (or with `ESTIBA_REQUIRE_ALL=1`), where this test must run;
/// elsewhere says why it skips.
fn skip(why: &str) {
    let set = |var: &str| {
        std::env::var(var)
            .map(|v| !v.is_empty() && v != "false" && v != "0")
            .unwrap_or(false)
    };
    assert!(
        !set("CI") && !set("ESTIBA_REQUIRE_ALL"),
        "the node example must run here, but {why}"
    );
    eprintln!("skipped: the node example: {why}");
}

/// A running `estiba run`, stopped by its PID when dropped, so a failing
/// assertion does not leave the server behind.
struct Server(Child);

impl Server {
    fn stop(&mut self) {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("a PID fits in pid_t"));
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The body of `GET path` on the loopback port, or why there is none.
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("answered {head:?}"));
    }
    Ok(body.to_owned())
}

/// Waits up to `secs` for the server to answer `GET path`.
fn get_when_up(server: &mut Server, port: u16, path: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match get(port, path) {
            Ok(body) => return body,
            Err(why) => {
                if let Ok(Some(status)) = server.0.try_wait() {
                    panic!("`estiba run` ended ({status}) before answering {path}");
                }
                assert!(
                    Instant::now() < deadline,
                    "nothing answered http://127.0.0.1:{port}{path} within {secs}s: {why}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn the_node_example_builds_on_a_local_base_and_answers_health() {
    if let Some(why) = missing() {
        skip(&why);
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("store");
    let repo = repo();

    ok(Command::new("bash")
        .arg(repo.join("scripts/node-base"))
        .arg(env!("CARGO_BIN_EXE_estiba"))
        .arg(&root)
        .arg(BASE));

    let seed = repo.join("testdata/examples/node-app");
    ok(estiba(&root)
        .args(["build", "--progress", "plain"])
        .args(["--build-arg", &format!("NODE_BASE={BASE}"), "-t", IMAGE])
        .arg(&seed));

    let inspect: Value =
        serde_json::from_str(&ok(estiba(&root).args(["inspect", IMAGE]))).expect("inspect JSON");
    let config = &inspect[0]["Config"];
    assert_eq!(
        config["ExposedPorts"],
        json!({"3000/tcp": {}}),
        "{config:#}"
    );
    assert_eq!(config["User"], "node", "{config:#}");
    assert_eq!(config["WorkingDir"], "/app", "{config:#}");
    assert_eq!(config["Cmd"], json!(["node", "server.js"]), "{config:#}");
    let health = json!([
        "CMD-SHELL",
        "wget -qO- http://localhost:3000/health || exit 1"
    ]);
    assert_eq!(config["Healthcheck"]["Test"], health, "{config:#}");
    assert_eq!(config["Healthcheck"]["Interval"], 30_000_000_000_u64);
    assert_eq!(config["Healthcheck"]["Timeout"], 3_000_000_000_u64);
    let env = config["Env"].as_array().expect("Env");
    for var in ["NODE_ENV=production", "APP_VERSION=dev"] {
        assert!(env.contains(&json!(var)), "{var} not in {env:?}");
    }

    // The server in its own network namespace, its port published on the
    // host with -p (through pasta), stopped by its PID.
    let port = free_port();
    let log = std::fs::File::create(tmp.path().join("run.log")).expect("log");
    let publish = format!("{port}:{port}");
    let mut server = Server(
        estiba(&root)
            .args([
                "run",
                "--rm",
                "-p",
                &publish,
                "-e",
                &format!("PORT={port}"),
                IMAGE,
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("estiba run starts"),
    );
    assert_eq!(get_when_up(&mut server, port, "/health", 30), "ok\n");
    assert_eq!(get_when_up(&mut server, port, "/", 5), "hola from dev\n");
    server.stop();
    let log = std::fs::read_to_string(tmp.path().join("run.log")).expect("log");
    assert!(log.contains(&format!("listening on {port}")), "{log}");
    assert!(
        get(port, "/health").is_err(),
        "the server still answers after `estiba run` was stopped"
    );

    // The image's HEALTHCHECK, as written, passes inside a container with
    // only lo: busybox's wget is there and localhost resolves.
    let check = format!(
        "node server.js >/dev/null 2>&1 &\n\
         for _ in $(seq 100); do ({}) && exit 0; sleep 0.1; done\n\
         exit 1",
        health[1].as_str().expect("CMD-SHELL line")
    );
    let out = ok(estiba(&root)
        .args(["run", "--network", "none", IMAGE, "sh", "-c"])
        .arg(check));
    assert_eq!(out, "ok\n");

    // npm in the base never needs the network: an install with none works.
    let out = ok(estiba(&root).args([
        "run",
        "--network",
        "none",
        "-u",
        "root",
        IMAGE,
        "npm",
        "install",
        "--omit=dev",
    ]));
    assert!(out.contains("up to date"), "{out}");
}
