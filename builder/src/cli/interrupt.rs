//! Ctrl-C, SIGTERM and SIGHUP: the command stops at once, says so, and
//! exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), as docker
//! does. A build also says which steps were running.
//!
//! The signals are blocked in every thread (the mask is set before any
//! thread starts and threads inherit it) and one thread waits for them, so
//! no handler runs at an awkward moment. The thread kills the steps' pastas
//! and exits; each build container's init gets SIGKILL when estiba dies
//! (its parent-death signal), which ends the step's whole PID namespace. Temporary data left in the store is
//! removed by the next command; the store itself is only ever changed by
//! renames, so it stays valid.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use estiba::progress::Reporter;
use nix::sys::signal::{SigSet, Signal};

/// The steps running now, by vertex id: what the cancel message names.
static RUNNING: Mutex<BTreeMap<usize, String>> = Mutex::new(BTreeMap::new());

/// Blocks SIGINT, SIGTERM and SIGHUP and starts the thread that waits for
/// them. Call first thing in `main`, before any other thread exists.
pub(crate) fn install() {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    if signals.thread_block().is_err() {
        return; // the default dispositions stay: the command still stops
    }
    let spawned = std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || loop {
            if let Ok(signal) = signals.wait() {
                estiba::executor::stop_all();
                eprint!("{}", cancel_message(signal, &running()));
                std::process::exit(128 + signal as i32);
            }
        });
    if spawned.is_err() {
        let _ = signals.thread_unblock();
    }
}

fn running() -> Vec<String> {
    RUNNING
        .lock()
        .map(|steps| {
            steps
                .iter()
                .map(|(id, name)| format!("#{id} {name}"))
                .collect()
        })
        .unwrap_or_default()
}

/// What is printed when `signal` stops the command.
fn cancel_message(signal: Signal, running: &[String]) -> String {
    let mut text = format!("\nestiba: canceled ({signal})\n");
    if !running.is_empty() {
        text.push_str("steps running when canceled:\n");
        for step in running {
            text.push_str(&format!("  {step}\n"));
        }
    }
    text
}

/// A [`Reporter`] that keeps [`RUNNING`] up to date and passes every
/// event on.
#[derive(Debug)]
pub(crate) struct Tracked<'a, R: ?Sized>(pub(crate) &'a R);

impl<R: Reporter + ?Sized> Tracked<'_, R> {
    fn finished(&self, id: usize) {
        if let Ok(mut steps) = RUNNING.lock() {
            steps.remove(&id);
        }
    }
}

impl<R: Reporter + ?Sized> Reporter for Tracked<'_, R> {
    fn started(&self, id: usize, name: &str) {
        if let Ok(mut steps) = RUNNING.lock() {
            steps.insert(id, name.to_owned());
        }
        self.0.started(id, name);
    }
    fn log(&self, id: usize, line: &str) {
        self.0.log(id, line);
    }
    fn cached(&self, id: usize) {
        self.finished(id);
        self.0.cached(id);
    }
    fn done(&self, id: usize, elapsed: Duration) {
        self.finished(id);
        self.0.done(id, elapsed);
    }
    fn failed(&self, id: usize, elapsed: Duration, message: &str) {
        self.finished(id);
        self.0.failed(id, elapsed, message);
    }
    fn warning(&self, message: &str) {
        self.0.warning(message);
    }
    fn transfer(&self, id: usize, item: &str, done: u64, total: u64) {
        self.0.transfer(id, item, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_signal_and_the_running_steps() {
        assert_eq!(
            cancel_message(Signal::SIGINT, &["#3 [2/3] RUN sleep 60".to_owned()]),
            "\nestiba: canceled (SIGINT)\nsteps running when canceled:\n  #3 [2/3] RUN sleep 60\n"
        );
        assert_eq!(
            cancel_message(Signal::SIGTERM, &[]),
            "\nestiba: canceled (SIGTERM)\n"
        );
    }
}
