//! The estiba frontend: Dockerfile text in, a build plan out.
//!
//! Everything here is pure and synchronous: no file system or network beyond
//! the bytes the caller hands in. The flow is [`parser`] (lines, directives,
//! continuations, heredocs) → [`instructions`] (typed, with flags) → [`plan`]
//! (ARG/ENV expansion, stages, pruning) → [`BuildGraph`]; [`checks`] runs
//! BuildKit's lint rules over the same text. The shell-word lexer
//! and the `.dockerignore` matcher live here too, since both are Dockerfile
//! language that the rest of estiba consumes.
#![deny(missing_docs)]

pub mod checks;
pub mod dockerignore;
pub mod graph;
pub mod instructions;
pub mod parser;
pub mod plan;
pub mod shell;
pub mod span;
pub mod suggest;

pub use graph::{BuildGraph, ImageConfig, Platform, PlatformError};
pub use plan::{
    named_context_key, plan, BaseImage, BaseResolver, NamedContext, NoImages, PlanOptions,
    ResolveError,
};
pub use span::Span;

/// Any frontend failure; every variant knows where in the Dockerfile it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text does not parse.
    #[error(transparent)]
    Parse(#[from] parser::ParseError),
    /// An instruction is not what it should be.
    #[error(transparent)]
    Instruction(#[from] instructions::InstructionError),
    /// The build cannot be planned.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// The `check=` directive or `BUILDKIT_DOCKERFILE_CHECK` does not parse.
    #[error("failed to parse check options")]
    Check {
        /// The directive's line; `None` for the build arg.
        span: Option<Span>,
        /// What is wrong with it.
        #[source]
        source: checks::CheckOptionError,
    },
}

impl Error {
    /// The Dockerfile lines the error is about, when it has any.
    pub fn span(&self) -> Option<&Span> {
        match self {
            Error::Parse(e) => Some(&e.span),
            Error::Instruction(e) => Some(&e.span),
            Error::Plan(e) => e.span.as_ref(),
            Error::Check { span, .. } => span.as_ref(),
        }
    }
}
