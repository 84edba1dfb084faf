//! The estiba frontend: Dockerfile text in, a build plan out.
//!
//! Everything here is pure and synchronous: no file system or network beyond
//! the bytes the caller hands in. The flow is `parser` (lines, directives,
//! continuations, heredocs) → `instructions` (typed, with flags) → `plan`
//! (ARG/ENV expansion, stages, pruning) → [`BuildGraph`]. The shell-word lexer
//! and the `.dockerignore` matcher live here too, since both are Dockerfile
//! language that the rest of estiba consumes.
#![deny(missing_docs)]

pub mod dockerignore;
pub mod shell;
pub mod span;

pub use span::Span;
