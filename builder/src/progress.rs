//! How the builder tells the world what it is doing. Library code reports
//! only through [`Reporter`]; the CLI decides how it looks (BuildKit-style
//! plain lines, a tty display, or nothing).

use std::time::Duration;

/// A build's progress events. Vertex ids are small numbers, unique per build.
pub trait Reporter: Sync {
    /// A vertex (a step, or internal work) starts: `name` is what BuildKit
    /// would print, e.g. `[build 2/4] COPY . /src`.
    fn started(&self, id: usize, name: &str);
    /// A line of detail for a vertex.
    fn log(&self, id: usize, line: &str);
    /// The vertex's result came from the cache.
    fn cached(&self, id: usize);
    /// The vertex finished.
    fn done(&self, id: usize, elapsed: Duration);
    /// The vertex failed with this message.
    fn failed(&self, id: usize, elapsed: Duration, message: &str);
    /// A warning not tied to a vertex.
    fn warning(&self, message: &str);
    /// Bytes moved so far of one item (a layer being pulled or pushed) of a
    /// vertex: `done` of `total`. Called often; a display shows it live.
    fn transfer(&self, id: usize, item: &str, done: u64, total: u64) {
        let _ = (id, item, done, total);
    }
}

/// `1.2MB`, as docker prints sizes (decimal units).
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[unit]
    }
}

/// A reporter that says nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {
    fn started(&self, _: usize, _: &str) {}
    fn log(&self, _: usize, _: &str) {}
    fn cached(&self, _: usize) {}
    fn done(&self, _: usize, _: Duration) {}
    fn failed(&self, _: usize, _: Duration, _: &str) {}
    fn warning(&self, _: &str) {}
}
