//! Where an instruction came from, so every error can point at its line.

use serde::{Deserialize, Serialize};

/// A place in a Dockerfile: file name, first and last line (1-based, inclusive)
/// and the column (1-based) the error or instruction starts at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    /// The Dockerfile's name as the user gave it (`Dockerfile`, `-` for stdin).
    pub file: String,
    /// First line, 1-based.
    pub line: usize,
    /// Last line, 1-based, inclusive (continuations and heredocs span lines).
    pub end_line: usize,
    /// Column on the first line, 1-based.
    pub column: usize,
}

impl Span {
    /// A span covering lines `line..=end_line`, starting at column 1.
    pub fn lines(file: &str, line: usize, end_line: usize) -> Self {
        Span {
            file: file.to_string(),
            line,
            end_line,
            column: 1,
        }
    }

    /// The same span moved to `column` on its first line.
    pub fn at_column(mut self, column: usize) -> Self {
        self.column = column;
        self
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// `Display` and `Error` for an error struct `{ span, kind }`: the kind is
/// the message and the kind's cause is the cause, so the `caused by:` chain
/// never repeats the message.
macro_rules! spanned_error {
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.kind, f)
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                std::error::Error::source(&self.kind)
            }
        }
    };
}
pub(crate) use spanned_error;
