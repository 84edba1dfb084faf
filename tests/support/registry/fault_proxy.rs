//! A loopback proxy between a client under test and a plain-http test
//! registry that misbehaves as registries and networks do: it answers a
//! random fraction of requests itself with 500, 502 or 429 (`Retry-After:
//! 0` or `1`) without forwarding them, cuts a random fraction of blob
//! downloads (`GET /v2/…/blobs/sha256:…`, 200 or 206) after part of the
//! body, and flips a byte in another fraction. Everything else is forwarded byte for byte: the request head with
//! `Connection: close` (one request per connection keeps the framing
//! simple), the body as it is framed (`Content-Length` or chunked), and the
//! whole answer, ranges and upload `Location`s included (the registry
//! builds those from the `Host` header, which names the proxy).
//!
//! Faults are drawn from a seeded RNG: the seed is printed on stderr, and
//! `ESTIBA_FAULT_SEED=N` replays it (the same sequence of draws; with
//! concurrent requests the order they arrive in may still differ). The
//! counters ([`FaultProxy::counts`]) let a test assert that faults really
//! happened before it asserts that the client survived them.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::http;

/// The variable that replays a run's faults.
pub(crate) const SEED_VAR: &str = "ESTIBA_FAULT_SEED";
/// How long either side may stay silent before the proxy gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// What the proxy does wrong, and how often.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Faults {
    /// The fraction (0 to 1) of requests answered with one of `statuses`
    /// instead of being forwarded.
    pub(crate) error_rate: f64,
    /// The statuses injected, picked uniformly: 500, 502 and 429 by
    /// default.
    pub(crate) statuses: Vec<u16>,
    /// The fraction (0 to 1) of blob GET answers cut after part of the body
    /// (a body of fewer than 2 bytes is never cut).
    pub(crate) cut_rate: f64,
    /// The fraction (0 to 1) of the remaining blob GET answers (those not
    /// cut) whose body has one byte flipped, its length kept: the client
    /// must notice the digest does not match.
    pub(crate) corrupt_rate: f64,
    /// At most this many faults (of every kind together), then it only
    /// forwards; `None` for no limit.
    pub(crate) max_faults: Option<u64>,
    /// The RNG seed; `None` for a random one. `ESTIBA_FAULT_SEED`
    /// overrides both.
    pub(crate) seed: Option<u64>,
}

impl Default for Faults {
    /// No faults at all: a faithful proxy.
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            statuses: vec![500, 502, 429],
            cut_rate: 0.0,
            corrupt_rate: 0.0,
            max_faults: None,
            seed: None,
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FaultCounts {
    /// Requests received (a head read).
    pub(crate) requests: u64,
    /// Requests forwarded to the registry.
    pub(crate) forwarded: u64,
    /// Injected answers by status.
    pub(crate) errors: BTreeMap<u16, u64>,
    /// Blob answers cut mid-body.
    pub(crate) cuts: u64,
    /// Blob answers with a byte flipped.
    pub(crate) corruptions: u64,
}

impl FaultCounts {
    /// Injected answers of every status.
    pub(crate) fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every fault: injected answers, cuts and corruptions.
    pub(crate) fn faults(&self) -> u64 {
        self.error_total() + self.cuts + self.corruptions
    }
}

/// A running fault proxy; stopped on drop.
#[derive(Debug)]
pub(crate) struct FaultProxy {
    server: http::LoopbackServer,
    seed: u64,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    upstream: String,
    faults: Faults,
    rng: Mutex<fastrand::Rng>,
    tally: Mutex<Tally>,
}

/// The counts, and the body faults decided whose answers have not come
/// yet: both
/// count against `max_faults`, under one lock, so a fault is booked when it
/// is decided, before the client can see it and send the next request.
#[derive(Debug, Default)]
struct Tally {
    counts: FaultCounts,
    pending_body_faults: u64,
}

/// What is done to a blob answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    /// Close the connection after part of it.
    Cut,
    /// Flip one byte of it.
    Corrupt,
}

/// What to do with one request.
enum Plan {
    /// Answer it with this status, not forwarding it.
    Fail(u16),
    /// Forward it; do this to the answer's body if it is a blob's.
    Forward(Option<BodyFault>),
}

impl State {
    fn tally<T>(&self, f: impl FnOnce(&mut Tally) -> T) -> T {
        f(&mut self.tally.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Decides, counts the request, and books the fault if there is one.
    fn plan(&self, head: &http::Head) -> Plan {
        let (fail, pick, cut, corrupt) = self.rng(|r| (r.f64(), r.usize(..), r.f64(), r.f64()));
        let statuses = &self.faults.statuses;
        self.tally(|t| {
            t.counts.requests += 1;
            let used = t.counts.faults() + t.pending_body_faults;
            if self.faults.max_faults.is_some_and(|max| used >= max) {
                return Plan::Forward(None);
            }
            if fail < self.faults.error_rate && !statuses.is_empty() {
                let status = statuses[pick % statuses.len()];
                *t.counts.errors.entry(status).or_default() += 1;
                return Plan::Fail(status);
            }
            let fault = if !is_blob_get(head) {
                None
            } else if cut < self.faults.cut_rate {
                Some(BodyFault::Cut)
            } else if corrupt < self.faults.corrupt_rate {
                Some(BodyFault::Corrupt)
            } else {
                None
            };
            if fault.is_some() {
                t.pending_body_faults += 1;
            }
            Plan::Forward(fault)
        })
    }

    /// Settles a booked body fault: made (`Some`) or not (the answer had
    /// no body to spoil).
    fn settle(&self, made: Option<BodyFault>) {
        self.tally(|t| {
            t.pending_body_faults -= 1;
            match made {
                Some(BodyFault::Cut) => t.counts.cuts += 1,
                Some(BodyFault::Corrupt) => t.counts.corruptions += 1,
                None => {}
            }
        });
    }
}

/// `GET /v2/NAME/blobs/sha256:HEX`.
fn is_blob_get(head: &http::Head) -> bool {
    let path = head.target().split('?').next().unwrap_or("");
    head.method() == "GET"
        && path.starts_with("/v2/")
        && path
            .rsplit_once("/blobs/")
            .is_some_and(|(_, d)| d.len() == 71 && d.starts_with("sha256:"))
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`
    /// (`127.0.0.1:PORT` of a plain-http registry).
    // The seed goes to stderr so a failing run can be replayed.
    #[allow(clippy::print_stderr)]
    pub(crate) fn start(upstream: &str, faults: Faults) -> Result<FaultProxy, String> {
        let seed = match std::env::var(SEED_VAR) {
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|e| format!("{SEED_VAR}={v:?} is not a number: {e}"))?,
            Err(_) => faults.seed.unwrap_or_else(|| fastrand::u64(..)),
        };
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            faults,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            tally: Mutex::new(Tally::default()),
        });
        let server = {
            let state = Arc::clone(&state);
            http::LoopbackServer::start("the fault proxy", move |conn| {
                let _ = serve(&state, conn);
            })?
        };
        eprintln!(
            "fault proxy 127.0.0.1:{} -> {upstream}: seed {seed} (replay with {SEED_VAR}={seed})",
            server.port()
        );
        Ok(FaultProxy {
            server,
            seed,
            state,
        })
    }

    /// `127.0.0.1:PORT`: point the client here instead of at the registry.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The seed of this run's faults.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// What it has done so far.
    pub(crate) fn counts(&self) -> FaultCounts {
        self.state.tally(|t| t.counts.clone())
    }
}

/// Handles one request on `client`, then closes the connection.
fn serve(state: &State, client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let Some(head) = http::read_head(&mut from_client)? else {
        return Ok(());
    };
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let mut to_client = &client;
    let fault = match state.plan(&head) {
        Plan::Fail(status) => {
            // Read the body first (unless the client waits for a 100), so
            // closing does not reset the connection before it reads this.
            if !expects_continue {
                http::copy_body(&head, &mut from_client, &mut io::sink())?;
            }
            let retry_after = if status == 429 {
                format!("Retry-After: {}\r\n", state.rng(|r| r.u8(0..=1)))
            } else {
                String::new()
            };
            let body = format!(
                r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {status} by the fault proxy"}}]}}"#
            );
            write!(
                to_client,
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry_after}Connection: close\r\n\r\n{body}",
                body.len()
            )?;
            to_client.flush()?;
            return Ok(());
        }
        Plan::Forward(fault) => fault,
    };
    let mut settled = false;
    let result = forward(state, head, from_client, &client, fault, &mut settled);
    if fault.is_some() && !settled {
        state.settle(None);
    }
    result
}

/// Forwards the request whose `head` was read from `from_client`, and
/// the answer back to `client`, doing `fault` to a blob's body (counted,
/// and `settled` set, before the client can see it).
fn forward(
    state: &State,
    mut head: http::Head,
    mut from_client: BufReader<TcpStream>,
    client: &TcpStream,
    fault: Option<BodyFault>,
    settled: &mut bool,
) -> io::Result<()> {
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let mut to_client = client;
    let upstream = TcpStream::connect(&state.upstream)?;
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    if expects_continue {
        // The proxy says go on itself and sends the body along at once.
        head.remove("expect");
        to_client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    head.remove("keep-alive");
    head.remove("proxy-connection");
    head.set("Connection", "close");
    let mut to_upstream = &upstream;
    to_upstream.write_all(&head.to_bytes())?;
    http::copy_body(&head, &mut from_client, &mut to_upstream)?;
    to_upstream.flush()?;
    state.tally(|t| t.counts.forwarded += 1);
    let mut from_upstream = BufReader::new(&upstream);
    let Some(mut answer) = http::read_head(&mut from_upstream)? else {
        return Ok(());
    };
    answer.remove("keep-alive");
    answer.set("Connection", "close");
    to_client.write_all(&answer.to_bytes())?;
    let len = answer.content_length().unwrap_or(0);
    let spoilable = matches!(answer.status(), 200 | 206) && len >= 2;
    if let (Some(fault), true) = (fault, spoilable) {
        let at = state.rng(|r| r.u64(1..len));
        state.settle(Some(fault));
        *settled = true;
        io::copy(&mut from_upstream.by_ref().take(at), &mut to_client)?;
        if fault == BodyFault::Cut {
            to_client.flush()?;
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        let mut byte = [0u8; 1];
        from_upstream.read_exact(&mut byte)?;
        to_client.write_all(&[byte[0] ^ 0xff])?;
    }
    // Connection: close: the answer ends where the registry's connection
    // does, whatever its framing.
    io::copy(&mut from_upstream, &mut to_client)?;
    to_client.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}
