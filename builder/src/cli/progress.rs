//! Progress output. `plain` prints BuildKit's line format for CI logs
//! (`#3 [2/4] COPY . /src`, `#3 CACHED`, `#3 DONE 0.1s`); `quiet` prints
//! nothing. The only module that writes progress to the terminal.

use estiba::progress::Reporter;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// BuildKit's `--progress=plain` lines on standard error.
#[derive(Debug)]
pub(crate) struct Plain {
    start: Instant,
    out: Mutex<std::io::Stderr>,
}

impl Plain {
    pub(crate) fn new() -> Self {
        Plain {
            start: Instant::now(),
            out: Mutex::new(std::io::stderr()),
        }
    }

    fn line(&self, text: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{text}");
        }
    }
}

impl Reporter for Plain {
    fn started(&self, id: usize, name: &str) {
        self.line(&format!("\n#{id} {name}"));
    }
    fn log(&self, id: usize, line: &str) {
        let t = self.start.elapsed().as_secs_f64();
        self.line(&format!("#{id} {t:.3} {line}"));
    }
    fn cached(&self, id: usize) {
        self.line(&format!("#{id} CACHED"));
    }
    fn done(&self, id: usize, elapsed: Duration) {
        self.line(&format!("#{id} DONE {:.1}s", elapsed.as_secs_f64()));
    }
    fn failed(&self, id: usize, elapsed: Duration, message: &str) {
        self.line(&format!(
            "#{id} ERROR {:.1}s: {message}",
            elapsed.as_secs_f64()
        ));
    }
    fn warning(&self, message: &str) {
        self.line(&format!("WARNING: {message}"));
    }
}
