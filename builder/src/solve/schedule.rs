//! Scheduling: which step may run now. Every stage starts at once; a step
//! that reads another stage waits for it here, and a step two stages share
//! runs once.

use super::{Built, Result, SolveErrorKind};
use estiba_cache::Digest;
use estiba_frontend::graph::{BuildGraph, Stage};
use std::collections::{BTreeMap, BTreeSet};

/// Stages' results as they finish. A step that reads a stage (its base,
/// `COPY --from`, `RUN --mount=from=`) waits here until that stage is
/// built, so every stage starts at once and each step runs as soon as what
/// it reads is ready.
#[derive(Debug, Default)]
pub(super) struct Finished {
    /// By stage index: the result, or `None` when the stage failed.
    done: std::sync::Mutex<BTreeMap<usize, Option<Built>>>,
    changed: std::sync::Condvar,
}

impl Finished {
    /// Stage `index`'s result, once it is built; an error if it failed.
    pub(super) fn get(&self, graph: &BuildGraph, index: usize) -> Result<Built> {
        let name = || {
            graph
                .stages
                .get(index)
                .map_or_else(|| format!("stage {index}"), Stage::display_name)
        };
        let poisoned = || SolveErrorKind::Panicked(name());
        let mut done = self.done.lock().map_err(|_| poisoned())?;
        loop {
            match done.get(&index) {
                Some(Some(built)) => return Ok(built.clone()),
                Some(None) => return Err(SolveErrorKind::StageFailed(name())),
                None => done = self.changed.wait(done).map_err(|_| poisoned())?,
            }
        }
    }

    pub(super) fn put(&self, index: usize, built: Option<Built>) {
        if let Ok(mut done) = self.done.lock() {
            done.insert(index, built);
        }
        self.changed.notify_all();
    }
}

/// Steps being run now, by cache key: a second stage reaching the same
/// step waits for the first and takes its result from the cache, as
/// BuildKit's solver merges identical vertices.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    keys: std::sync::Mutex<BTreeSet<Digest>>,
    changed: std::sync::Condvar,
}

/// The right to run the step of a key; dropping it lets waiters look again.
pub(super) struct Claim<'a> {
    inflight: &'a InFlight,
    key: Digest,
}

impl InFlight {
    /// `Some` when no one runs `key`'s step now (it is ours to run); `None`
    /// after waiting for whoever ran it.
    pub(super) fn claim(&self, key: &Digest) -> Option<Claim<'_>> {
        let Ok(mut keys) = self.keys.lock() else {
            // A panicked holder: run it here rather than wait forever.
            return Some(Claim {
                inflight: self,
                key: *key,
            });
        };
        if keys.insert(*key) {
            return Some(Claim {
                inflight: self,
                key: *key,
            });
        }
        while keys.contains(key) {
            keys = match self.changed.wait(keys) {
                Ok(keys) => keys,
                Err(_) => return None,
            };
        }
        None
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.inflight.keys.lock() {
            keys.remove(&self.key);
        }
        self.inflight.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn graph(stages: usize) -> BuildGraph {
        let text: String = (0..stages)
            .map(|i| format!("FROM scratch AS s{i}\n"))
            .collect();
        let opts = estiba_frontend::PlanOptions::new("Dockerfile");
        estiba_frontend::plan(&text, &opts, &estiba_frontend::NoImages).expect("plan")
    }

    fn built(key: &str) -> Built {
        Built {
            config: Default::default(),
            layers: Vec::new(),
            key: key.to_string(),
        }
    }

    #[test]
    fn a_reader_waits_for_the_stage_and_learns_of_its_failure() {
        let graph = graph(2);
        let finished = Finished::default();
        let got = std::thread::scope(|scope| {
            let reader = scope.spawn(|| finished.get(&graph, 0).map(|b| b.key));
            std::thread::sleep(std::time::Duration::from_millis(50));
            finished.put(0, Some(built("k0")));
            reader.join().expect("reader")
        });
        assert_eq!(got.ok().as_deref(), Some("k0"));
        finished.put(1, None);
        assert!(matches!(
            finished.get(&graph, 1),
            Err(SolveErrorKind::StageFailed(name)) if name == "s1"
        ));
    }

    #[test]
    fn a_key_is_run_by_one_claimant_while_the_others_wait() {
        let inflight = InFlight::default();
        let key = Digest::of(b"step");
        let released = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let claim = inflight.claim(&key).expect("the first claims it");
            // Whenever it starts, it gets past `claim` only after the
            // first let go (having waited, or finding the key free).
            let waiter = scope.spawn(|| {
                let _ = inflight.claim(&key);
                released.load(Ordering::SeqCst)
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            released.store(true, Ordering::SeqCst);
            drop(claim);
            assert!(waiter.join().expect("waiter"));
        });
        assert!(inflight.claim(&key).is_some(), "free again");
        assert!(inflight.claim(&Digest::of(b"other")).is_some());
    }
}
