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
    /// When each step started: a log line's time is since its step began,
    /// as BuildKit prints it.
    starts: Mutex<std::collections::HashMap<usize, Instant>>,
    out: Mutex<std::io::Stderr>,
}

impl Plain {
    pub(crate) fn new() -> Self {
        Plain {
            starts: Mutex::default(),
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
        if let Ok(mut starts) = self.starts.lock() {
            starts.insert(id, Instant::now());
        }
        self.line(&format!("\n#{id} {name}"));
    }
    fn log(&self, id: usize, line: &str) {
        let started = self
            .starts
            .lock()
            .ok()
            .and_then(|starts| starts.get(&id).copied());
        let t = started.map_or(0.0, |at| at.elapsed().as_secs_f64());
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

/// A live display for terminals: one line per step with a spinner while it
/// runs, then its outcome and time; colors unless `NO_COLOR` is set.
pub(crate) struct Tty {
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::BTreeMap<usize, indicatif::ProgressBar>>,
    /// Steps that move bytes: their name and each item's (done, total).
    transfers: Mutex<std::collections::BTreeMap<usize, Transfers>>,
    color: bool,
}

/// A step's name and the bytes its items (layers) moved so far.
type Transfers = (String, std::collections::BTreeMap<String, (u64, u64)>);

impl std::fmt::Debug for Tty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tty")
    }
}

impl Tty {
    pub(crate) fn new() -> Self {
        Tty {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr(),
            ),
            bars: Mutex::new(std::collections::BTreeMap::new()),
            transfers: Mutex::new(std::collections::BTreeMap::new()),
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// Replaces a step's spinner with a permanent line above the live ones.
    fn finish(&self, id: usize, mark: &str, tail: &str) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(&id));
        let named = self
            .transfers
            .lock()
            .ok()
            .and_then(|mut t| t.remove(&id))
            .map(|(name, _)| name);
        if let Some(bar) = bar {
            let name = named.unwrap_or_else(|| bar.message());
            bar.finish_and_clear();
            self.multi.remove(&bar);
            let _ = self.multi.println(format!("{mark} {name} {tail}"));
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

impl Reporter for Tty {
    fn started(&self, id: usize, name: &str) {
        let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(id, bar);
        }
    }
    fn log(&self, _: usize, _: &str) {
        // Detail lines are for CI logs (plain); the live display stays short.
    }
    fn cached(&self, id: usize) {
        self.finish(id, &self.paint("34", "="), &self.paint("34", "CACHED"));
    }
    fn done(&self, id: usize, elapsed: Duration) {
        self.finish(
            id,
            &self.paint("32", "✔"),
            &format!("{:.1}s", elapsed.as_secs_f64()),
        );
    }
    fn failed(&self, id: usize, elapsed: Duration, message: &str) {
        self.finish(
            id,
            &self.paint("31", "✘"),
            &format!(
                "{:.1}s {}",
                elapsed.as_secs_f64(),
                self.paint("31", message)
            ),
        );
    }
    fn warning(&self, message: &str) {
        let _ = self
            .multi
            .println(self.paint("33", &format!("WARNING: {message}")));
    }
    fn transfer(&self, id: usize, item: &str, done: u64, total: u64) {
        let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(&id).cloned()) else {
            return;
        };
        let Ok(mut transfers) = self.transfers.lock() else {
            return;
        };
        let (name, items) = transfers
            .entry(id)
            .or_insert_with(|| (bar.message(), Default::default()));
        items.insert(item.to_string(), (done, total));
        let (done, total) = items
            .values()
            .fold((0, 0), |(d, t), (di, ti)| (d + di, t + ti));
        bar.set_message(format!(
            "{name} {} / {}",
            estiba::progress::human_size(done),
            estiba::progress::human_size(total)
        ));
    }
}

/// The progress display a command asked for.
pub(crate) fn chosen<'a>(
    mode: super::args::ProgressMode,
    quiet: bool,
    plain: &'a Plain,
    tty: &'a Tty,
) -> &'a dyn Reporter {
    match (mode, quiet) {
        (super::args::ProgressMode::Quiet, _) | (_, true) => &estiba::progress::Silent,
        (super::args::ProgressMode::Tty, _) => tty,
        (super::args::ProgressMode::Auto, _)
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) =>
        {
            tty
        }
        _ => plain,
    }
}
