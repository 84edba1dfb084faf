//! Progress output. `plain` prints BuildKit's line format for CI logs
//! (`#3 [2/4] COPY . /src`, `#3 CACHED`, `#3 DONE 0.1s`); `tty` draws
//! BuildKit's live display; `quiet` prints nothing. The only module that
//! writes progress to the terminal.

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

/// The live display for terminals, laid out as BuildKit's: a header with
/// the elapsed time and the steps done of those known, each finished step
/// once as a permanent line, and each running step with its time (and bytes
/// moved) and its last output lines, every line cut to the terminal's
/// width. Redrawn ten times a second from a thread of its own, and once
/// more when dropped. Colors unless `NO_COLOR` is set.
pub(crate) struct Tty {
    shared: std::sync::Arc<(Mutex<Screen>, std::sync::Condvar)>,
    painter: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Tty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tty")
    }
}

/// Output lines shown under a running step, as BuildKit shows a few.
const LOG_LINES: usize = 6;

#[derive(Debug)]
enum State {
    Running,
    Cached,
    Done(Duration),
    Failed(Duration, String),
}

#[derive(Debug)]
struct Step {
    id: usize,
    name: String,
    started: Instant,
    state: State,
    logs: std::collections::VecDeque<String>,
    /// Lines kept under the step when it ends (the image's ID and names).
    kept: Vec<String>,
    transfers: std::collections::BTreeMap<String, (u64, u64)>,
    /// Already written as a permanent line.
    printed: bool,
}

#[derive(Debug)]
struct Screen {
    /// What the header says is going on: Building, Pushing, Pulling.
    doing: &'static str,
    start: Instant,
    steps: Vec<Step>,
    /// Warnings not written yet.
    pending: Vec<String>,
    /// Lines of the live part on the terminal now.
    live_lines: usize,
    color: bool,
    stopped: bool,
}

impl Tty {
    /// A display whose header says `[+] {doing} 1.2s (3/7)`.
    pub(crate) fn new(doing: &'static str) -> Self {
        Tty {
            shared: std::sync::Arc::new((
                Mutex::new(Screen {
                    doing,
                    start: Instant::now(),
                    steps: Vec::new(),
                    pending: Vec::new(),
                    live_lines: 0,
                    color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                    stopped: false,
                }),
                std::sync::Condvar::new(),
            )),
            painter: Mutex::new(None),
        }
    }

    /// Changes the screen, starting the painter on first use (a command
    /// that reports nothing draws nothing).
    fn with(&self, change: impl FnOnce(&mut Screen)) {
        if let Ok(mut screen) = self.shared.0.lock() {
            change(&mut screen);
        }
        let stopped = self.shared.0.lock().map_or(true, |s| s.stopped);
        if let Ok(mut painter) = self.painter.lock() {
            if painter.is_none() && !stopped {
                let shared = std::sync::Arc::clone(&self.shared);
                *painter = Some(std::thread::spawn(move || paint_until_stopped(&shared)));
            }
        }
    }

    fn end(&self, id: usize, state: State) {
        self.with(|screen| {
            if let Some(step) = screen.steps.iter_mut().find(|s| s.id == id) {
                step.state = state;
            }
        });
    }
}

impl Tty {
    /// Draws the last frame and stops drawing: call before printing a
    /// result on standard output, which the live part would overwrite.
    pub(crate) fn finish(&self) {
        if let Ok(mut screen) = self.shared.0.lock() {
            screen.stopped = true;
        }
        self.shared.1.notify_all();
        if let Some(painter) = self.painter.lock().ok().and_then(|mut p| p.take()) {
            let _ = painter.join();
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        self.finish();
    }
}

fn paint_until_stopped(shared: &(Mutex<Screen>, std::sync::Condvar)) {
    let (lock, wake) = shared;
    let Ok(mut screen) = lock.lock() else {
        return;
    };
    loop {
        let last = screen.stopped;
        let frame = screen.frame(terminal_width(), last);
        {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(frame.as_bytes());
            let _ = err.flush();
        }
        if last {
            return;
        }
        screen = match wake.wait_timeout(screen, Duration::from_millis(100)) {
            Ok((screen, _)) => screen,
            Err(_) => return,
        };
    }
}

/// The terminal's columns: standard error's window, else `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct given.
    if unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut size) } == 0 && size.ws_col > 0 {
        return usize::from(size.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c > 0)
        .unwrap_or(80)
}

/// `text` without control characters (a step's output may move the
/// cursor) and cut to `width` columns.
fn fit(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // An escape sequence: ESC [ … final byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    if out.chars().count() > width {
        out = out.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

impl Screen {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// One step's line: ` => NAME   1.2s`, the time at the right edge.
    fn step_line(&self, step: &Step, width: usize) -> String {
        let (prefix, time, code) = match &step.state {
            State::Running => ("", step.started.elapsed(), ""),
            State::Cached => ("CACHED ", Duration::ZERO, "34"),
            State::Done(t) => ("", *t, "34"),
            State::Failed(t, _) => ("ERROR ", *t, "31"),
        };
        let mut name = format!(" => {prefix}{}", step.name);
        if !step.transfers.is_empty() {
            let (done, total) = step
                .transfers
                .values()
                .fold((0, 0), |(d, t), (di, ti)| (d + di, t + ti));
            name.push_str(&format!(
                " {} / {}",
                estiba::progress::human_size(done),
                estiba::progress::human_size(total)
            ));
        }
        let time = format!("{:.1}s", time.as_secs_f64());
        let room = width.saturating_sub(time.len() + 1).max(1);
        let name = fit(&name, room);
        let pad = room.saturating_sub(name.chars().count());
        let line = format!("{name}{} {time}", " ".repeat(pad));
        if code.is_empty() {
            line
        } else {
            self.paint(code, &line)
        }
    }

    /// What to write: the live part erased, new permanent lines, the live
    /// part again (`last`: the final header, and no live part).
    fn frame(&mut self, width: usize, last: bool) -> String {
        let mut out = String::new();
        if self.live_lines > 0 {
            // Up to the live part's first line, then erase to the end.
            out.push_str(&format!("\x1b[{}F\x1b[J", self.live_lines));
        }
        let done = self
            .steps
            .iter()
            .filter(|s| !matches!(s.state, State::Running))
            .count();
        let header = format!(
            "[+] {} {:.1}s ({done}/{}){}",
            self.doing,
            self.start.elapsed().as_secs_f64(),
            self.steps.len(),
            if last { " FINISHED" } else { "" }
        );
        let mut permanent = Vec::new();
        for message in std::mem::take(&mut self.pending) {
            permanent.push(self.paint("33", &fit(&format!("WARNING: {message}"), width)));
        }
        let mut live = vec![fit(&header, width)];
        for i in 0..self.steps.len() {
            let step = &self.steps[i];
            if step.printed {
                continue;
            }
            let finished = !matches!(step.state, State::Running);
            if finished || last {
                permanent.push(self.step_line(step, width));
                for line in &step.kept {
                    permanent.push(fit(&format!(" => => {line}"), width));
                }
                if let State::Failed(_, message) = &step.state {
                    // The first line only: the error report after the
                    // build shows the step's output once.
                    let first = message.lines().next().unwrap_or_default();
                    permanent.push(self.paint("31", &fit(&format!(" => => {first}"), width)));
                }
                self.steps[i].printed = true;
            } else {
                live.push(self.step_line(step, width));
                for line in &step.logs {
                    live.push(fit(&format!(" => => # {line}"), width));
                }
            }
        }
        if last {
            live = vec![fit(&header, width)];
            self.live_lines = 0;
        } else {
            self.live_lines = live.len();
        }
        for line in permanent.iter().chain(&live) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

impl Reporter for Tty {
    fn started(&self, id: usize, name: &str) {
        self.with(|screen| {
            screen.steps.push(Step {
                id,
                name: name.to_string(),
                started: Instant::now(),
                state: State::Running,
                logs: std::collections::VecDeque::new(),
                kept: Vec::new(),
                transfers: std::collections::BTreeMap::new(),
                printed: false,
            })
        });
    }
    fn log(&self, id: usize, line: &str) {
        self.with(|screen| {
            if let Some(step) = screen.steps.iter_mut().find(|s| s.id == id) {
                // The export's lines name the image: they stay, as BuildKit's.
                if line.starts_with("writing image ") || line.starts_with("naming to ") {
                    step.kept.push(line.to_string());
                }
                step.logs.push_back(line.to_string());
                if step.logs.len() > LOG_LINES {
                    step.logs.pop_front();
                }
            }
        });
    }
    fn cached(&self, id: usize) {
        self.end(id, State::Cached);
    }
    fn done(&self, id: usize, elapsed: Duration) {
        self.end(id, State::Done(elapsed));
    }
    fn failed(&self, id: usize, elapsed: Duration, message: &str) {
        self.end(id, State::Failed(elapsed, message.to_string()));
    }
    fn warning(&self, message: &str) {
        self.with(|screen| screen.pending.push(message.to_string()));
    }
    fn transfer(&self, id: usize, item: &str, done: u64, total: u64) {
        self.with(|screen| {
            if let Some(step) = screen.steps.iter_mut().find(|s| s.id == id) {
                step.transfers.insert(item.to_string(), (done, total));
            }
        });
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
