//! Maps keyed by tree paths, and memos of them that hold a bounded number
//! of entries: what a build remembers per path (the context's lstats and
//! directories, the COPY writer's view of the layers below) must not grow
//! with the number of files.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Maps and sets keyed by context paths. Every path of the context is
/// looked up several times per build; the default SipHash is made to resist
/// keys chosen by an attacker, which paths in one's own context are not,
/// and costs several times as much as this multiply-rotate hash.
pub(crate) type PathMap<V> = HashMap<String, V, BuildHasherDefault<PathHasher>>;

/// FxHash's step (rustc's own hasher) over 8-byte words.
#[derive(Default, Clone, Copy)]
pub(crate) struct PathHasher(pub(crate) u64);

impl std::hash::Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A bounded memo: entries go to a young generation; when it holds half
/// the cap it becomes the old one and the previous old one is dropped. A
/// forgotten entry is only looked up again.
#[derive(Debug)]
pub(crate) struct Memo<V> {
    pub(crate) cap: usize,
    young: PathMap<V>,
    old: PathMap<V>,
}

impl<V: Clone> Memo<V> {
    pub(crate) fn new(cap: usize) -> Self {
        Memo {
            cap,
            young: PathMap::default(),
            old: PathMap::default(),
        }
    }

    pub(crate) fn get(&self, path: &str) -> Option<V> {
        self.young.get(path).or_else(|| self.old.get(path)).cloned()
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    pub(crate) fn insert(&mut self, path: String, value: V) {
        if self.young.len() >= (self.cap / 2).max(1) && !self.young.contains_key(&path) {
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.young.insert(path, value);
    }
}
