//! The Dockerfile shell-word lexer: quotes, escapes and `$VAR` expansion.
//!
//! Dockerfile instructions such as `ENV`, `ARG`, `COPY`, `WORKDIR` or `FROM`
//! expand variables themselves, before anything reaches a shell, and the
//! parser uses the same lexer to find heredoc words. For images and cache keys
//! to match `docker build`, this module reproduces BuildKit's lexer
//! (`frontend/dockerfile/shell/lex.go`) exactly, quirks included, and is
//! checked against BuildKit's own `envVarTest` and `wordsTest` corpora.
//!
//! What it understands:
//!
//! * single quotes (everything literal), double quotes (only `$`, `"` and the
//!   escape character are special) and the escape character (`\` or `` ` ``);
//! * `$VAR`, `${VAR}`, positional (`$1`, `${10}`) and special (`$@`, `$*`,
//!   `$#`, `$?`, `$-`, `$$`, `$!`, `$0`) parameters, which are looked up in the
//!   environment like any other name (and so are normally empty);
//! * `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`,
//!   `${VAR:?message}`, `${VAR?message}`;
//! * `${VAR#pattern}`, `${VAR##pattern}`, `${VAR%pattern}`, `${VAR%%pattern}`,
//!   `${VAR/pattern/replacement}` and `${VAR//pattern/replacement}`, where a
//!   pattern knows `*` and `?` (neither matches a newline) and `\*`, `\?`,
//!   `\\`, `\}` and `\/` escapes, but no bracket expressions, as in BuildKit.
//!
//! BuildKit quirks kept on purpose, because `docker build` shows them too:
//!
//! * a byte-order mark at the very start of a word is dropped;
//! * in `${VAR//pattern/replacement}`, `$0` and `${0}` in the replacement stand
//!   for the matched text, `$$` for `$`, and other `$name` references for
//!   nothing (Go's regexp template rules); the single `/` form has no such rule;
//! * when splitting into words ([`Lexer::expand_words`]), a `${VAR…}` with a
//!   modifier drops the part of the current word that came before it
//!   (`a${X:-b}` gives `b`), because BuildKit resets a buffer it shares with
//!   the nested word;
//! * with [`Lexer::skip_unset_env`], `${VAR//p/r}` of an unset `VAR` is kept as
//!   `${VAR/p/r}`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use estiba_frontend::shell::Lexer;
//!
//! let env = BTreeMap::from([("NAME".to_string(), "world".to_string())]);
//! let lexer = Lexer::new('\\');
//! assert_eq!(lexer.expand_word("'hello' \"${NAME}\"", &env).unwrap(), "hello world");
//! assert_eq!(lexer.expand_words("a ${NAME}s  b", &env).unwrap(), ["a", "worlds", "b"]);
//! assert_eq!(lexer.expand_word("${NAME%%r*}", &env).unwrap(), "wo");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// How deeply `${…}` substitutions may nest inside each other's words.
///
/// BuildKit has no limit (Go stacks grow); a limit keeps a hostile Dockerfile
/// from overflowing our stack. Real Dockerfiles nest two or three levels.
pub const MAX_NESTING: usize = 128;

/// The largest result one `${VAR//pattern/replacement}` may produce.
///
/// Nested replacements multiply: `${A//?/${A//?/…}}` grows geometrically with
/// depth, and BuildKit would exhaust its memory on twenty levels of it. A
/// Dockerfile word has no business being this large; a hostile one gets an
/// error instead of the builder's memory. (Found by fuzzing.)
pub const MAX_REPLACEMENT_BYTES: usize = 16 << 20;

/// Where the lexer looks variables up.
///
/// Positional and special parameters (`$1`, `$@`, …) are looked up by their
/// name like any other variable, as BuildKit does.
pub trait Env {
    /// The value of `name`, or `None` when it is unset (which differs from set
    /// to the empty string for `${VAR-x}`, `${VAR+x}` and `${VAR?}`).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// An environment in which nothing is set, e.g. for finding heredoc words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Why a word could not be expanded.
///
/// Every variant carries `offset`, the byte offset in the word of the construct
/// that failed (the opening quote, or the `$` of `${`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// A `'` without its closing `'`.
    #[error("unterminated single-quoted string")]
    UnterminatedSingleQuote {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// A `"` without its closing `"`.
    #[error("unterminated double-quoted string")]
    UnterminatedDoubleQuote {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// A `${` without its closing `}`.
    #[error("missing '}}' in substitution")]
    MissingBrace {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A `${VAR/pattern` without the `/` that ends the pattern.
    #[error("missing '/' in substitution")]
    MissingSlash {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${}`, `${:…}` or `${{…}`.
    #[error("bad substitution: {text}")]
    BadSubstitution {
        /// The start of the offending substitution, e.g. `${}`.
        text: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${VAR` followed by something other than `}` or a known modifier,
    /// e.g. `${VAR:=x}`, `${VAR:#x}` or `${.}`.
    #[error("unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier {
        /// The modifier as written, e.g. `:=`.
        modifier: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A `${VAR//p/r}` whose result would exceed [`MAX_REPLACEMENT_BYTES`].
    #[error("substitution result larger than {MAX_REPLACEMENT_BYTES} bytes")]
    TooLarge {
        /// Byte offset of the `$` of the substitution.
        offset: usize,
    },
    /// Nested substitutions deeper than [`MAX_NESTING`].
    #[error("substitutions nested more than {MAX_NESTING} deep")]
    TooDeep {
        /// Byte offset of the `$` of the substitution that went too deep.
        offset: usize,
    },
    /// `${VAR?message}` with `VAR` unset, or `${VAR:?message}` with `VAR`
    /// unset or empty.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message given, or a default one.
        message: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A pattern of `${VAR#…}`, `${VAR%…}` or `${VAR/…/…}` with an escape
    /// other than `\*`, `\?`, `\\`, `\}` or `\/`.
    #[error("invalid pattern ({pattern}) in substitution: {}", describe_escape(*.escaped))]
    InvalidPattern {
        /// The pattern after expansion.
        pattern: String,
        /// The character after the `\`, `None` for a `\` at the end.
        escaped: Option<char>,
        /// Byte offset of the `$`.
        offset: usize,
    },
}

fn describe_escape(escaped: Option<char>) -> String {
    match escaped {
        Some(c) => format!("invalid escape '\\{c}'"),
        None => "'\\' at end of pattern".to_string(),
    }
}

impl ShellError {
    /// Byte offset in the word of the construct that failed.
    pub fn offset(&self) -> usize {
        match self {
            Self::UnterminatedSingleQuote { offset }
            | Self::UnterminatedDoubleQuote { offset }
            | Self::MissingBrace { offset }
            | Self::MissingSlash { offset }
            | Self::BadSubstitution { offset, .. }
            | Self::UnsupportedModifier { offset, .. }
            | Self::TooDeep { offset }
            | Self::TooLarge { offset }
            | Self::Required { offset, .. }
            | Self::InvalidPattern { offset, .. } => *offset,
        }
    }
}

/// The result of [`Lexer::expand_word_detailed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word.
    pub value: String,
    /// Names that were looked up and found set (possibly empty).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and found unset.
    pub unmatched: BTreeSet<String>,
}

/// The shell-word lexer, BuildKit's `shell.Lex`.
///
/// Small and free of state: one lexer can serve any number of words, from
/// any number of threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape character: `\` by default, `` ` `` after
    /// an `# escape=`` ` `` directive. All options off.
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (BuildKit `RawQuotes`).
    pub fn raw_quotes(mut self, yes: bool) -> Self {
        self.raw_quotes = yes;
        self
    }

    /// Keep escape characters in the output (BuildKit `RawEscapes`).
    pub fn raw_escapes(mut self, yes: bool) -> Self {
        self.raw_escapes = yes;
        self
    }

    /// Leave references to unset variables as written instead of expanding
    /// them to nothing (BuildKit `SkipUnsetEnv`).
    pub fn skip_unset_env(mut self, yes: bool) -> Self {
        self.skip_unset_env = yes;
        self
    }

    /// Treat quotes as ordinary characters, as in heredoc bodies (BuildKit
    /// `SkipProcessQuotes`).
    pub fn skip_process_quotes(mut self, yes: bool) -> Self {
        self.skip_process_quotes = yes;
        self
    }

    /// Expands `word` into one string, keeping its spaces (BuildKit
    /// `ProcessWord`).
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        let mut run = Run::new(self, word, env, false, false);
        run.top_level()
    }

    /// Expands `word` and splits the result into words at unquoted white
    /// space, as a shell would (BuildKit `ProcessWords`). White space that
    /// comes from a variable splits too; quoted white space does not. Empty
    /// words are dropped.
    pub fn expand_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let mut run = Run::new(self, word, env, true, false);
        run.top_level()?;
        Ok(run.words.map(Words::finish).unwrap_or_default())
    }

    /// Like [`expand_word`](Self::expand_word), also returning the names of
    /// the variables that were referenced and found set (for "unused build
    /// argument" checks; BuildKit `ProcessWordWithMatches`).
    pub fn expand_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<(String, BTreeSet<String>), ShellError> {
        let expansion = self.expand_word_detailed(word, env)?;
        Ok((expansion.value, expansion.matched))
    }

    /// Like [`expand_word`](Self::expand_word), also returning which referenced
    /// names were set and which were not (for "undefined variable" checks).
    pub fn expand_word_detailed(&self, word: &str, env: &dyn Env) -> Result<Expansion, ShellError> {
        let mut run = Run::new(self, word, env, false, true);
        let value = run.top_level()?;
        let (matched, unmatched) = run.captures.unwrap_or_default();
        Ok(Expansion {
            value,
            matched,
            unmatched,
        })
    }
}

/// Word splitting state (BuildKit's `wordsStruct`).
#[derive(Debug, Default)]
struct Words {
    done: Vec<String>,
    current: String,
    in_word: bool,
}

impl Words {
    /// A character from outside quotes: white space ends a word.
    fn add_char(&mut self, c: char) {
        if !c.is_whitespace() {
            self.add_raw_char(c);
        } else if self.in_word && !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
            self.in_word = false;
        }
    }

    /// A character that cannot split (escaped).
    fn add_raw_char(&mut self, c: char) {
        self.current.push(c);
        self.in_word = true;
    }

    /// Expanded text: splits at white space.
    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    /// Quoted text: never splits, and marks a word even when empty.
    fn add_raw_str(&mut self, s: &str) {
        self.current.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// One expansion of one word: BuildKit's `shellWord`, with a byte cursor
/// instead of Go's `text/scanner`.
struct Run<'w, 'e> {
    lexer: &'w Lexer,
    env: &'e dyn Env,
    src: &'w str,
    pos: usize,
    /// The escape mode in force; nested words change it for their duration.
    raw_escapes: bool,
    depth: usize,
    /// Top-level word splitting, when asked for.
    words: Option<Words>,
    /// Names found set and unset, when asked for.
    captures: Option<(BTreeSet<String>, BTreeSet<String>)>,
}

impl<'w, 'e> Run<'w, 'e> {
    fn new(lexer: &'w Lexer, src: &'w str, env: &'e dyn Env, split: bool, capture: bool) -> Self {
        // Go's text/scanner skips a byte-order mark at the very start.
        let pos = if src.starts_with('\u{FEFF}') {
            '\u{FEFF}'.len_utf8()
        } else {
            0
        };
        Self {
            lexer,
            env,
            src,
            pos,
            raw_escapes: lexer.raw_escapes,
            depth: 0,
            words: split.then(Words::default),
            captures: capture.then(Default::default),
        }
    }

    fn top_level(&mut self) -> Result<String, ShellError> {
        let mut out = String::with_capacity(self.src.len());
        self.word(None, self.lexer.raw_escapes, &mut out, true)?;
        Ok(out)
    }

    #[inline]
    fn peek(&self) -> Option<char> {
        let b = *self.src.as_bytes().get(self.pos)?;
        if b.is_ascii() {
            Some(char::from(b))
        } else {
            self.src.get(self.pos..)?.chars().next()
        }
    }

    #[inline]
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Looks `name` up, noting whether it was set.
    fn get_env(&mut self, name: &str) -> Option<&'e str> {
        let value = self.env.lookup(name);
        if let Some((matched, unmatched)) = &mut self.captures {
            let set = if value.is_some() { matched } else { unmatched };
            if !set.contains(name) {
                set.insert(name.to_string());
            }
        }
        value
    }

    /// Processes characters into `out` up to `stop` (consumed) or the end of
    /// the input (BuildKit `processStopOn`). Only the top level splits words.
    fn word(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        out: &mut String,
        top: bool,
    ) -> Result<(), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.word_inner(stop, out, top);
        self.raw_escapes = saved;
        result
    }

    fn word_inner(
        &mut self,
        stop: Option<char>,
        out: &mut String,
        top: bool,
    ) -> Result<(), ShellError> {
        if !top {
            // BuildKit shares one buffer between a word and the words nested
            // in it, and every nested word starts by resetting it.
            if let Some(words) = &mut self.words {
                words.current.clear();
            }
        }
        let split = top && self.words.is_some();
        let quotes = !self.lexer.skip_process_quotes;
        let escape = self.lexer.escape;
        while let Some(c) = self.peek() {
            let run = self.plain_run(stop, quotes);
            if run > 0 {
                let text = self.src.get(self.pos..self.pos + run).unwrap_or_default();
                self.pos += run;
                out.push_str(text);
                self.split(split, |words| words.add_str(text));
                continue;
            }
            if stop == Some(c) {
                self.pos += c.len_utf8();
                return Ok(());
            }
            let start = out.len();
            match c {
                '$' => {
                    self.dollar(out)?;
                    self.split(split, |words| words.add_str(&out[start..]));
                }
                '<' => {
                    self.possible_heredoc(out);
                    self.split(split, |words| words.add_raw_str(&out[start..]));
                }
                '\'' if quotes => {
                    self.single_quote(out)?;
                    self.split(split, |words| words.add_raw_str(&out[start..]));
                }
                '"' if quotes => {
                    self.double_quote(out)?;
                    self.split(split, |words| words.add_raw_str(&out[start..]));
                }
                _ => {
                    self.pos += c.len_utf8();
                    if c == escape {
                        if self.raw_escapes {
                            out.push(c);
                            self.split(split, |words| words.add_raw_char(c));
                        }
                        // An escape at the end of the word is dropped.
                        let Some(escaped) = self.bump() else { break };
                        out.push(escaped);
                        self.split(split, |words| words.add_raw_char(escaped));
                    } else {
                        out.push(c);
                        self.split(split, |words| words.add_char(c));
                    }
                }
            }
        }
        match stop {
            // The caller turns this into the error for its construct.
            Some(_) => Err(ShellError::MissingBrace { offset: self.pos }),
            None => Ok(()),
        }
    }

    /// How many bytes from the cursor on are ordinary characters, which
    /// [`word_inner`](Self::word_inner) copies as they are. Ends on a
    /// character boundary.
    fn plain_run(&self, stop: Option<char>, quotes: bool) -> usize {
        let bytes = self.src.as_bytes().get(self.pos..).unwrap_or_default();
        let escape = self.lexer.escape;
        let special = |b: u8| match b {
            b'$' | b'<' => true,
            b'\'' | b'"' => quotes,
            // Only an escape or stop character beyond ASCII stops at these.
            0x80.. => !escape.is_ascii() || stop.is_some_and(|s| !s.is_ascii()),
            _ => escape == char::from(b) || stop == Some(char::from(b)),
        };
        bytes
            .iter()
            .position(|&b| special(b))
            .unwrap_or(bytes.len())
    }

    /// Feeds the top-level word splitter, when splitting.
    #[inline]
    fn split(&mut self, split: bool, feed: impl FnOnce(&mut Words)) {
        if split {
            if let Some(words) = &mut self.words {
                feed(words);
            }
        }
    }

    /// `'…'`: everything literal; a single quote cannot be escaped.
    fn single_quote(&mut self, out: &mut String) -> Result<(), ShellError> {
        let offset = self.pos;
        self.pos += 1;
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.bump() {
                None => return Err(ShellError::UnterminatedSingleQuote { offset }),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(());
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"…"`: `$` expands; the escape character escapes only `"`, `$` and
    /// itself and is kept literally before anything else.
    fn double_quote(&mut self, out: &mut String) -> Result<(), ShellError> {
        let offset = self.pos;
        self.pos += 1;
        if self.lexer.raw_quotes {
            out.push('"');
        }
        let escape = self.lexer.escape;
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote { offset }),
                Some('"') => {
                    self.pos += 1;
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    return Ok(());
                }
                Some('$') => self.dollar(out)?,
                Some(mut c) => {
                    self.pos += c.len_utf8();
                    if c == escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            // Dropped; the loop then reports the missing quote.
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == escape => {
                                self.pos += next.len_utf8();
                                c = next;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// `<`: literal, but `<<` takes the blanks after it along, so that a
    /// heredoc marker such as `<< EOF` stays one word.
    fn possible_heredoc(&mut self, out: &mut String) {
        self.pos += 1;
        out.push('<');
        if self.peek() != Some('<') {
            return;
        }
        self.pos += 1;
        out.push('<');
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            self.pos += 1;
            out.push(c);
        }
    }

    /// A parameter name: a run of digits (positional), one special
    /// parameter character, or letters, digits and `_`. May be empty.
    fn name(&mut self) -> &'w str {
        let src = self.src;
        let start = self.pos;
        match self.peek() {
            Some(c) if is_go_digit(c) => {
                while let Some(c) = self.peek().filter(|&c| is_go_digit(c)) {
                    self.pos += c.len_utf8();
                }
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => self.pos += c.len_utf8(),
            _ => {
                while let Some(c) = self
                    .peek()
                    .filter(|&c| c == '_' || is_go_letter(c) || is_go_digit(c))
                {
                    self.pos += c.len_utf8();
                }
            }
        }
        src.get(start..self.pos).unwrap_or_default()
    }

    /// `$…` at the cursor (BuildKit `processDollar`).
    fn dollar(&mut self, out: &mut String) -> Result<(), ShellError> {
        let offset = self.pos;
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                out.push('$');
                return Ok(());
            }
            match self.get_env(name) {
                Some(value) => out.push_str(value),
                None if self.lexer.skip_unset_env => {
                    out.push('$');
                    out.push_str(name);
                }
                None => {}
            }
            return Ok(());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(ShellError::MissingBrace { offset }),
            Some(c @ ('{' | '}' | ':')) => {
                return Err(ShellError::BadSubstitution {
                    text: format!("${{{c}"),
                    offset,
                });
            }
            Some(_) => {}
        }
        let name = self.name();
        match self.bump() {
            None => Err(ShellError::MissingBrace { offset }),
            Some('}') => {
                match self.get_env(name) {
                    Some(value) => out.push_str(value),
                    None if self.lexer.skip_unset_env => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                    None => {}
                }
                Ok(())
            }
            Some(':') => {
                let op = self.bump();
                self.modifier(name, true, op, offset, out)
            }
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => {
                self.modifier(name, false, Some(op), offset, out)
            }
            Some('/') => self.replace(name, offset, out),
            Some(c) => Err(ShellError::UnsupportedModifier {
                modifier: c.to_string(),
                offset,
            }),
        }
    }

    /// Expands the nested word of a substitution into `out`, up to `stop`.
    fn nested_word(
        &mut self,
        stop: char,
        raw_escapes: bool,
        offset: usize,
        out: &mut String,
    ) -> Result<(), ShellError> {
        if self.depth >= MAX_NESTING {
            return Err(ShellError::TooDeep { offset });
        }
        self.depth += 1;
        let result = self.word(Some(stop), raw_escapes, out, false);
        self.depth -= 1;
        match result {
            // Whatever failed inside, running out of input means the
            // substitution itself is unterminated.
            Err(_) if self.peek().is_none() => Err(if stop == '/' {
                ShellError::MissingSlash { offset }
            } else {
                ShellError::MissingBrace { offset }
            }),
            other => other,
        }
    }

    /// `${name:op word}` (`colon`) or `${name op word}`, the cursor after `op`.
    fn modifier(
        &mut self,
        name: &'w str,
        colon: bool,
        op: Option<char>,
        offset: usize,
        out: &mut String,
    ) -> Result<(), ShellError> {
        let modifier = || {
            let mut m = String::with_capacity(2);
            if colon {
                m.push(':');
            }
            m.extend(op);
            m
        };
        let pattern = matches!(op, Some('#' | '%'));
        if colon && pattern {
            return Err(ShellError::UnsupportedModifier {
                modifier: modifier(),
                offset,
            });
        }
        // The word goes straight into `out`, and is taken back out when the
        // variable's value wins.
        let mark = out.len();
        self.nested_word('}', pattern, offset, out)?;
        let value = self.get_env(name);
        if value.is_none() && self.lexer.skip_unset_env {
            out.insert_str(mark, &format!("${{{name}{}", modifier()));
            out.push('}');
            return Ok(());
        }
        let unset = match value {
            None => true,
            Some(v) => colon && v.is_empty(),
        };
        match op {
            Some('-') => {
                if !unset {
                    out.truncate(mark);
                    out.push_str(value.unwrap_or_default());
                }
            }
            Some('+') => {
                if unset {
                    out.truncate(mark);
                }
            }
            Some('?') => {
                if unset {
                    let message = match out.get(mark..).unwrap_or_default() {
                        "" if value.is_none() => "is not allowed to be unset".to_string(),
                        "" => "is not allowed to be empty".to_string(),
                        given => given.to_string(),
                    };
                    return Err(ShellError::Required {
                        name: name.to_string(),
                        message,
                        offset,
                    });
                }
                out.truncate(mark);
                out.push_str(value.unwrap_or_default());
            }
            Some(op @ ('#' | '%')) => {
                let word = out.get(mark..).unwrap_or_default();
                // `##` and `%%` match the longest text, `#` and `%` the shortest.
                let (greedy, pattern) = match word.strip_prefix(op) {
                    Some(rest) => (true, rest),
                    None => (false, word),
                };
                let value = value.unwrap_or_default();
                let kept = trim(value, pattern, greedy, op == '%').map_err(|escaped| {
                    ShellError::InvalidPattern {
                        pattern: pattern.to_string(),
                        escaped,
                        offset,
                    }
                })?;
                out.truncate(mark);
                out.push_str(kept);
            }
            _ => {
                return Err(ShellError::UnsupportedModifier {
                    modifier: modifier(),
                    offset,
                })
            }
        }
        Ok(())
    }

    /// `${name/pattern/replacement}` or `${name//pattern/replacement}`, the
    /// cursor after the first `/`.
    fn replace(
        &mut self,
        name: &'w str,
        offset: usize,
        out: &mut String,
    ) -> Result<(), ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let mark = out.len();
        self.nested_word('/', true, offset, out)?;
        let middle = out.len();
        self.nested_word('}', true, offset, out)?;
        let value = self.get_env(name);
        if value.is_none() && self.lexer.skip_unset_env {
            // BuildKit writes the `//` form back with a single `/`.
            out.insert(middle, '/');
            out.insert_str(mark, &format!("${{{name}/"));
            out.push('}');
            return Ok(());
        }
        let pattern = out.get(mark..middle).unwrap_or_default();
        let replacement = out.get(middle..).unwrap_or_default();
        let compiled =
            compile_pattern(pattern.chars()).map_err(|escaped| ShellError::InvalidPattern {
                pattern: pattern.to_string(),
                escaped,
                offset,
            })?;
        let value = value.unwrap_or_default();
        // Every match (at most one per char, plus the end) gets the replacement.
        let bound = (value.chars().count() + 1)
            .saturating_mul(replacement.len())
            .saturating_add(value.len());
        if bound > MAX_REPLACEMENT_BYTES {
            return Err(ShellError::TooLarge { offset });
        }
        let replaced = substitute(value, &compiled, replacement, all);
        out.truncate(mark);
        out.push_str(&replaced);
        Ok(())
    }
}

/// One element of a `#`, `%` or `/` pattern: BuildKit turns these into a Go
/// regular expression, whose `.` does not match a newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: any character but a newline.
    Any,
    /// `*`: any run of characters without a newline.
    Star,
}

impl Tok {
    fn accepts(self, c: char) -> bool {
        match self {
            Tok::Lit(l) => l == c,
            Tok::Any | Tok::Star => c != '\n',
        }
    }
}

/// Parses a pattern (BuildKit `convertShellPatternToRegex`). `\}` and `\/`
/// stand for `}` and `/`; `\*`, `\?` and `\\` for themselves; any other escape
/// is an error, reported with the escaped character (`None` at the end).
fn compile_pattern(pattern: impl Iterator<Item = char>) -> Result<Vec<Tok>, Option<char>> {
    let mut chars = pattern.peekable();
    let mut toks = Vec::new();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            '\\' => match chars.peek() {
                Some('}' | '/') => continue,
                _ => match chars.next() {
                    Some(e @ ('*' | '?' | '\\')) => Tok::Lit(e),
                    other => return Err(other),
                },
            },
            c => Tok::Lit(c),
        });
    }
    Ok(toks)
}

/// Reverses a pattern keeping each `\x` pair in order (BuildKit
/// `reversePattern`), so that a suffix match becomes a prefix match.
fn reverse_pattern(pattern: &str) -> Vec<char> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut rest = chars.as_slice();
    while !rest.is_empty() {
        let len = if rest.first() == Some(&'\\') && rest.len() > 1 {
            2
        } else {
            1
        };
        let (unit, tail) = rest.split_at(len);
        units.push(unit);
        rest = tail;
    }
    units
        .iter()
        .rev()
        .flat_map(|unit| unit.iter().copied())
        .collect()
}

/// Byte offsets of the characters of `s`, plus `s.len()` at the end.
fn char_offsets(s: &str) -> Vec<usize> {
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect()
}

/// `${VAR#p}` / `${VAR##p}` (`suffix` false) and `${VAR%p}` / `${VAR%%p}`:
/// what is left of `value` after removing the matched prefix or suffix.
fn trim<'v>(
    value: &'v str,
    pattern: &str,
    greedy: bool,
    suffix: bool,
) -> Result<&'v str, Option<char>> {
    if suffix {
        let toks = compile_pattern(reverse_pattern(pattern).into_iter())?;
        let text: Vec<char> = value.chars().rev().collect();
        Ok(match Vm::new(&toks, greedy).find(&text, 0, true) {
            Some((_, end)) => {
                let keep = text.len() - end;
                let byte = char_offsets(value)
                    .get(keep)
                    .copied()
                    .unwrap_or(value.len());
                value.get(..byte).unwrap_or(value)
            }
            None => value,
        })
    } else {
        let toks = compile_pattern(pattern.chars())?;
        let text: Vec<char> = value.chars().collect();
        Ok(match Vm::new(&toks, greedy).find(&text, 0, true) {
            Some((_, end)) => {
                let byte = char_offsets(value).get(end).copied().unwrap_or(value.len());
                value.get(byte..).unwrap_or(value)
            }
            None => value,
        })
    }
}

/// `${VAR/p/r}` (first match) and `${VAR//p/r}` (`all`), with Go's
/// `Regexp.ReplaceAllString` rules for the latter: no second replacement for
/// an empty match right after a match, and `$` templates in `replacement`.
fn substitute(value: &str, toks: &[Tok], replacement: &str, all: bool) -> String {
    let text: Vec<char> = value.chars().collect();
    let offsets = char_offsets(value);
    let byte = |k: usize| offsets.get(k).copied().unwrap_or(value.len());
    let slice = |from: usize, to: usize| value.get(byte(from)..byte(to)).unwrap_or_default();
    let mut vm = Vm::new(toks, true);
    let mut out = String::with_capacity(value.len() + replacement.len());
    if !all {
        match vm.find(&text, 0, false) {
            Some((start, end)) => {
                out.push_str(slice(0, start));
                out.push_str(replacement);
                out.push_str(slice(end, text.len()));
            }
            None => out.push_str(value),
        }
        return out;
    }
    let mut last_end = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((start, end)) = vm.find(&text, search, false) else {
            break;
        };
        out.push_str(slice(last_end, start));
        if end > last_end || start == 0 {
            expand_template(replacement, slice(start, end), &mut out);
        }
        last_end = end;
        search = if end > search { end } else { search + 1 };
    }
    out.push_str(slice(last_end, text.len()));
    out
}

/// Go's `Regexp.Expand` for a regexp without groups: `$$` is `$`, `$0` and
/// `${0}` the match, any other `$name` or `${name}` nothing, and a `$` that
/// starts no name is literal.
fn expand_template(template: &str, matched: &str, out: &mut String) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (body, brace) = match rest.strip_prefix('{') {
            Some(body) => (body, true),
            None => (rest, false),
        };
        let len = body
            .char_indices()
            .find(|&(_, c)| !(c == '_' || is_go_letter(c) || is_go_digit(c)))
            .map_or(body.len(), |(i, _)| i);
        let name = &body[..len];
        let after = &body[len..];
        let after = if brace {
            after.strip_prefix('}')
        } else {
            Some(after)
        };
        match after {
            Some(after) if !name.is_empty() => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            _ => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// A Pike VM over [`Tok`]s with leftmost-first (backtracking-order) priority,
/// which is how Go's regexp chooses among matches: linear in the text, no
/// backtracking blow-up.
struct Vm<'p> {
    toks: &'p [Tok],
    greedy: bool,
    /// Generation at which each program counter was last added to a list.
    seen: Vec<usize>,
    generation: usize,
    lazy_stars: Vec<usize>,
    current: Vec<(usize, usize)>,
    next: Vec<(usize, usize)>,
}

impl<'p> Vm<'p> {
    fn new(toks: &'p [Tok], greedy: bool) -> Self {
        Self {
            toks,
            greedy,
            seen: vec![0; toks.len() + 1],
            generation: 0,
            lazy_stars: Vec::new(),
            current: Vec::new(),
            next: Vec::new(),
        }
    }

    /// Adds the thread at `pc` (started at `start`) to `list`, following
    /// `*`'s choice between another character and the rest of the pattern in
    /// priority order. `pc == toks.len()` is the match.
    fn add(&mut self, list: &mut Vec<(usize, usize)>, mut pc: usize, start: usize) {
        loop {
            match self.seen.get_mut(pc) {
                Some(seen) if *seen != self.generation => *seen = self.generation,
                _ => break,
            }
            if self.toks.get(pc) == Some(&Tok::Star) {
                if self.greedy {
                    list.push((pc, start));
                } else {
                    self.lazy_stars.push(pc);
                }
                pc += 1;
            } else {
                list.push((pc, start));
                break;
            }
        }
        while let Some(star) = self.lazy_stars.pop() {
            list.push((star, start));
        }
    }

    /// The leftmost-first match starting at or after `from` (exactly at
    /// `from` when `anchored`), as character indices.
    fn find(&mut self, text: &[char], from: usize, anchored: bool) -> Option<(usize, usize)> {
        let mut current = std::mem::take(&mut self.current);
        let mut next = std::mem::take(&mut self.next);
        current.clear();
        self.generation += 1;
        let mut found = None;
        let mut pos = from;
        loop {
            if found.is_none() && (!anchored || pos == from) {
                self.add(&mut current, 0, pos);
            }
            if current.is_empty() {
                break;
            }
            let c = text.get(pos).copied();
            self.generation += 1;
            next.clear();
            for &(pc, start) in &current {
                match self.toks.get(pc) {
                    None => {
                        // Threads after this one have lower priority.
                        found = Some((start, pos));
                        break;
                    }
                    Some(&tok) => {
                        if c.is_some_and(|c| tok.accepts(c)) {
                            let to = if tok == Tok::Star { pc } else { pc + 1 };
                            self.add(&mut next, to, start);
                        }
                    }
                }
            }
            if c.is_none() {
                break;
            }
            std::mem::swap(&mut current, &mut next);
            pos += 1;
        }
        self.current = current;
        self.next = next;
        found
    }
}

/// Go's `unicode.IsLetter`.
fn is_go_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_table(LETTER, c)
    }
}

/// Go's `unicode.IsDigit`.
fn is_go_digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_table(DECIMAL_DIGIT, c)
    }
}

/// Whether `c` falls in one of the sorted inclusive pairs of `table`.
fn in_table(table: &[u32], c: char) -> bool {
    let c = u32::from(c);
    let (mut low, mut high) = (0, table.len() / 2);
    while low < high {
        let mid = low + (high - low) / 2;
        let (Some(&first), Some(&last)) = (table.get(2 * mid), table.get(2 * mid + 1)) else {
            return false;
        };
        if c < first {
            high = mid;
        } else if c > last {
            low = mid + 1;
        } else {
            return true;
        }
    }
    false
}

// Tables generated from the Unicode Character Database 15.0.0, the version of
// Go's `unicode` package in the Go release BuildKit is built with.

/// Non-ASCII code points of general category L (Lu, Ll, Lt, Lm, Lo), Unicode 15.0.0,
/// as flattened inclusive `start, end` pairs: Go's `unicode.IsLetter`.
const LETTER: &[u32] = &[
    0x00AA, 0x00AA, 0x00B5, 0x00B5, 0x00BA, 0x00BA, 0x00C0, 0x00D6, 0x00D8, 0x00F6, 0x00F8, 0x02C1,
    0x02C6, 0x02D1, 0x02E0, 0x02E4, 0x02EC, 0x02EC, 0x02EE, 0x02EE, 0x0370, 0x0374, 0x0376, 0x0377,
    0x037A, 0x037D, 0x037F, 0x037F, 0x0386, 0x0386, 0x0388, 0x038A, 0x038C, 0x038C, 0x038E, 0x03A1,
    0x03A3, 0x03F5, 0x03F7, 0x0481, 0x048A, 0x052F, 0x0531, 0x0556, 0x0559, 0x0559, 0x0560, 0x0588,
    0x05D0, 0x05EA, 0x05EF, 0x05F2, 0x0620, 0x064A, 0x066E, 0x066F, 0x0671, 0x06D3, 0x06D5, 0x06D5,
    0x06E5, 0x06E6, 0x06EE, 0x06EF, 0x06FA, 0x06FC, 0x06FF, 0x06FF, 0x0710, 0x0710, 0x0712, 0x072F,
    0x074D, 0x07A5, 0x07B1, 0x07B1, 0x07CA, 0x07EA, 0x07F4, 0x07F5, 0x07FA, 0x07FA, 0x0800, 0x0815,
    0x081A, 0x081A, 0x0824, 0x0824, 0x0828, 0x0828, 0x0840, 0x0858, 0x0860, 0x086A, 0x0870, 0x0887,
    0x0889, 0x088E, 0x08A0, 0x08C9, 0x0904, 0x0939, 0x093D, 0x093D, 0x0950, 0x0950, 0x0958, 0x0961,
    0x0971, 0x0980, 0x0985, 0x098C, 0x098F, 0x0990, 0x0993, 0x09A8, 0x09AA, 0x09B0, 0x09B2, 0x09B2,
    0x09B6, 0x09B9, 0x09BD, 0x09BD, 0x09CE, 0x09CE, 0x09DC, 0x09DD, 0x09DF, 0x09E1, 0x09F0, 0x09F1,
    0x09FC, 0x09FC, 0x0A05, 0x0A0A, 0x0A0F, 0x0A10, 0x0A13, 0x0A28, 0x0A2A, 0x0A30, 0x0A32, 0x0A33,
    0x0A35, 0x0A36, 0x0A38, 0x0A39, 0x0A59, 0x0A5C, 0x0A5E, 0x0A5E, 0x0A72, 0x0A74, 0x0A85, 0x0A8D,
    0x0A8F, 0x0A91, 0x0A93, 0x0AA8, 0x0AAA, 0x0AB0, 0x0AB2, 0x0AB3, 0x0AB5, 0x0AB9, 0x0ABD, 0x0ABD,
    0x0AD0, 0x0AD0, 0x0AE0, 0x0AE1, 0x0AF9, 0x0AF9, 0x0B05, 0x0B0C, 0x0B0F, 0x0B10, 0x0B13, 0x0B28,
    0x0B2A, 0x0B30, 0x0B32, 0x0B33, 0x0B35, 0x0B39, 0x0B3D, 0x0B3D, 0x0B5C, 0x0B5D, 0x0B5F, 0x0B61,
    0x0B71, 0x0B71, 0x0B83, 0x0B83, 0x0B85, 0x0B8A, 0x0B8E, 0x0B90, 0x0B92, 0x0B95, 0x0B99, 0x0B9A,
    0x0B9C, 0x0B9C, 0x0B9E, 0x0B9F, 0x0BA3, 0x0BA4, 0x0BA8, 0x0BAA, 0x0BAE, 0x0BB9, 0x0BD0, 0x0BD0,
    0x0C05, 0x0C0C, 0x0C0E, 0x0C10, 0x0C12, 0x0C28, 0x0C2A, 0x0C39, 0x0C3D, 0x0C3D, 0x0C58, 0x0C5A,
    0x0C5D, 0x0C5D, 0x0C60, 0x0C61, 0x0C80, 0x0C80, 0x0C85, 0x0C8C, 0x0C8E, 0x0C90, 0x0C92, 0x0CA8,
    0x0CAA, 0x0CB3, 0x0CB5, 0x0CB9, 0x0CBD, 0x0CBD, 0x0CDD, 0x0CDE, 0x0CE0, 0x0CE1, 0x0CF1, 0x0CF2,
    0x0D04, 0x0D0C, 0x0D0E, 0x0D10, 0x0D12, 0x0D3A, 0x0D3D, 0x0D3D, 0x0D4E, 0x0D4E, 0x0D54, 0x0D56,
    0x0D5F, 0x0D61, 0x0D7A, 0x0D7F, 0x0D85, 0x0D96, 0x0D9A, 0x0DB1, 0x0DB3, 0x0DBB, 0x0DBD, 0x0DBD,
    0x0DC0, 0x0DC6, 0x0E01, 0x0E30, 0x0E32, 0x0E33, 0x0E40, 0x0E46, 0x0E81, 0x0E82, 0x0E84, 0x0E84,
    0x0E86, 0x0E8A, 0x0E8C, 0x0EA3, 0x0EA5, 0x0EA5, 0x0EA7, 0x0EB0, 0x0EB2, 0x0EB3, 0x0EBD, 0x0EBD,
    0x0EC0, 0x0EC4, 0x0EC6, 0x0EC6, 0x0EDC, 0x0EDF, 0x0F00, 0x0F00, 0x0F40, 0x0F47, 0x0F49, 0x0F6C,
    0x0F88, 0x0F8C, 0x1000, 0x102A, 0x103F, 0x103F, 0x1050, 0x1055, 0x105A, 0x105D, 0x1061, 0x1061,
    0x1065, 0x1066, 0x106E, 0x1070, 0x1075, 0x1081, 0x108E, 0x108E, 0x10A0, 0x10C5, 0x10C7, 0x10C7,
    0x10CD, 0x10CD, 0x10D0, 0x10FA, 0x10FC, 0x1248, 0x124A, 0x124D, 0x1250, 0x1256, 0x1258, 0x1258,
    0x125A, 0x125D, 0x1260, 0x1288, 0x128A, 0x128D, 0x1290, 0x12B0, 0x12B2, 0x12B5, 0x12B8, 0x12BE,
    0x12C0, 0x12C0, 0x12C2, 0x12C5, 0x12C8, 0x12D6, 0x12D8, 0x1310, 0x1312, 0x1315, 0x1318, 0x135A,
    0x1380, 0x138F, 0x13A0, 0x13F5, 0x13F8, 0x13FD, 0x1401, 0x166C, 0x166F, 0x167F, 0x1681, 0x169A,
    0x16A0, 0x16EA, 0x16F1, 0x16F8, 0x1700, 0x1711, 0x171F, 0x1731, 0x1740, 0x1751, 0x1760, 0x176C,
    0x176E, 0x1770, 0x1780, 0x17B3, 0x17D7, 0x17D7, 0x17DC, 0x17DC, 0x1820, 0x1878, 0x1880, 0x1884,
    0x1887, 0x18A8, 0x18AA, 0x18AA, 0x18B0, 0x18F5, 0x1900, 0x191E, 0x1950, 0x196D, 0x1970, 0x1974,
    0x1980, 0x19AB, 0x19B0, 0x19C9, 0x1A00, 0x1A16, 0x1A20, 0x1A54, 0x1AA7, 0x1AA7, 0x1B05, 0x1B33,
    0x1B45, 0x1B4C, 0x1B83, 0x1BA0, 0x1BAE, 0x1BAF, 0x1BBA, 0x1BE5, 0x1C00, 0x1C23, 0x1C4D, 0x1C4F,
    0x1C5A, 0x1C7D, 0x1C80, 0x1C88, 0x1C90, 0x1CBA, 0x1CBD, 0x1CBF, 0x1CE9, 0x1CEC, 0x1CEE, 0x1CF3,
    0x1CF5, 0x1CF6, 0x1CFA, 0x1CFA, 0x1D00, 0x1DBF, 0x1E00, 0x1F15, 0x1F18, 0x1F1D, 0x1F20, 0x1F45,
    0x1F48, 0x1F4D, 0x1F50, 0x1F57, 0x1F59, 0x1F59, 0x1F5B, 0x1F5B, 0x1F5D, 0x1F5D, 0x1F5F, 0x1F7D,
    0x1F80, 0x1FB4, 0x1FB6, 0x1FBC, 0x1FBE, 0x1FBE, 0x1FC2, 0x1FC4, 0x1FC6, 0x1FCC, 0x1FD0, 0x1FD3,
    0x1FD6, 0x1FDB, 0x1FE0, 0x1FEC, 0x1FF2, 0x1FF4, 0x1FF6, 0x1FFC, 0x2071, 0x2071, 0x207F, 0x207F,
    0x2090, 0x209C, 0x2102, 0x2102, 0x2107, 0x2107, 0x210A, 0x2113, 0x2115, 0x2115, 0x2119, 0x211D,
    0x2124, 0x2124, 0x2126, 0x2126, 0x2128, 0x2128, 0x212A, 0x212D, 0x212F, 0x2139, 0x213C, 0x213F,
    0x2145, 0x2149, 0x214E, 0x214E, 0x2183, 0x2184, 0x2C00, 0x2CE4, 0x2CEB, 0x2CEE, 0x2CF2, 0x2CF3,
    0x2D00, 0x2D25, 0x2D27, 0x2D27, 0x2D2D, 0x2D2D, 0x2D30, 0x2D67, 0x2D6F, 0x2D6F, 0x2D80, 0x2D96,
    0x2DA0, 0x2DA6, 0x2DA8, 0x2DAE, 0x2DB0, 0x2DB6, 0x2DB8, 0x2DBE, 0x2DC0, 0x2DC6, 0x2DC8, 0x2DCE,
    0x2DD0, 0x2DD6, 0x2DD8, 0x2DDE, 0x2E2F, 0x2E2F, 0x3005, 0x3006, 0x3031, 0x3035, 0x303B, 0x303C,
    0x3041, 0x3096, 0x309D, 0x309F, 0x30A1, 0x30FA, 0x30FC, 0x30FF, 0x3105, 0x312F, 0x3131, 0x318E,
    0x31A0, 0x31BF, 0x31F0, 0x31FF, 0x3400, 0x4DBF, 0x4E00, 0xA48C, 0xA4D0, 0xA4FD, 0xA500, 0xA60C,
    0xA610, 0xA61F, 0xA62A, 0xA62B, 0xA640, 0xA66E, 0xA67F, 0xA69D, 0xA6A0, 0xA6E5, 0xA717, 0xA71F,
    0xA722, 0xA788, 0xA78B, 0xA7CA, 0xA7D0, 0xA7D1, 0xA7D3, 0xA7D3, 0xA7D5, 0xA7D9, 0xA7F2, 0xA801,
    0xA803, 0xA805, 0xA807, 0xA80A, 0xA80C, 0xA822, 0xA840, 0xA873, 0xA882, 0xA8B3, 0xA8F2, 0xA8F7,
    0xA8FB, 0xA8FB, 0xA8FD, 0xA8FE, 0xA90A, 0xA925, 0xA930, 0xA946, 0xA960, 0xA97C, 0xA984, 0xA9B2,
    0xA9CF, 0xA9CF, 0xA9E0, 0xA9E4, 0xA9E6, 0xA9EF, 0xA9FA, 0xA9FE, 0xAA00, 0xAA28, 0xAA40, 0xAA42,
    0xAA44, 0xAA4B, 0xAA60, 0xAA76, 0xAA7A, 0xAA7A, 0xAA7E, 0xAAAF, 0xAAB1, 0xAAB1, 0xAAB5, 0xAAB6,
    0xAAB9, 0xAABD, 0xAAC0, 0xAAC0, 0xAAC2, 0xAAC2, 0xAADB, 0xAADD, 0xAAE0, 0xAAEA, 0xAAF2, 0xAAF4,
    0xAB01, 0xAB06, 0xAB09, 0xAB0E, 0xAB11, 0xAB16, 0xAB20, 0xAB26, 0xAB28, 0xAB2E, 0xAB30, 0xAB5A,
    0xAB5C, 0xAB69, 0xAB70, 0xABE2, 0xAC00, 0xD7A3, 0xD7B0, 0xD7C6, 0xD7CB, 0xD7FB, 0xF900, 0xFA6D,
    0xFA70, 0xFAD9, 0xFB00, 0xFB06, 0xFB13, 0xFB17, 0xFB1D, 0xFB1D, 0xFB1F, 0xFB28, 0xFB2A, 0xFB36,
    0xFB38, 0xFB3C, 0xFB3E, 0xFB3E, 0xFB40, 0xFB41, 0xFB43, 0xFB44, 0xFB46, 0xFBB1, 0xFBD3, 0xFD3D,
    0xFD50, 0xFD8F, 0xFD92, 0xFDC7, 0xFDF0, 0xFDFB, 0xFE70, 0xFE74, 0xFE76, 0xFEFC, 0xFF21, 0xFF3A,
    0xFF41, 0xFF5A, 0xFF66, 0xFFBE, 0xFFC2, 0xFFC7, 0xFFCA, 0xFFCF, 0xFFD2, 0xFFD7, 0xFFDA, 0xFFDC,
    0x10000, 0x1000B, 0x1000D, 0x10026, 0x10028, 0x1003A, 0x1003C, 0x1003D, 0x1003F, 0x1004D,
    0x10050, 0x1005D, 0x10080, 0x100FA, 0x10280, 0x1029C, 0x102A0, 0x102D0, 0x10300, 0x1031F,
    0x1032D, 0x10340, 0x10342, 0x10349, 0x10350, 0x10375, 0x10380, 0x1039D, 0x103A0, 0x103C3,
    0x103C8, 0x103CF, 0x10400, 0x1049D, 0x104B0, 0x104D3, 0x104D8, 0x104FB, 0x10500, 0x10527,
    0x10530, 0x10563, 0x10570, 0x1057A, 0x1057C, 0x1058A, 0x1058C, 0x10592, 0x10594, 0x10595,
    0x10597, 0x105A1, 0x105A3, 0x105B1, 0x105B3, 0x105B9, 0x105BB, 0x105BC, 0x10600, 0x10736,
    0x10740, 0x10755, 0x10760, 0x10767, 0x10780, 0x10785, 0x10787, 0x107B0, 0x107B2, 0x107BA,
    0x10800, 0x10805, 0x10808, 0x10808, 0x1080A, 0x10835, 0x10837, 0x10838, 0x1083C, 0x1083C,
    0x1083F, 0x10855, 0x10860, 0x10876, 0x10880, 0x1089E, 0x108E0, 0x108F2, 0x108F4, 0x108F5,
    0x10900, 0x10915, 0x10920, 0x10939, 0x10980, 0x109B7, 0x109BE, 0x109BF, 0x10A00, 0x10A00,
    0x10A10, 0x10A13, 0x10A15, 0x10A17, 0x10A19, 0x10A35, 0x10A60, 0x10A7C, 0x10A80, 0x10A9C,
    0x10AC0, 0x10AC7, 0x10AC9, 0x10AE4, 0x10B00, 0x10B35, 0x10B40, 0x10B55, 0x10B60, 0x10B72,
    0x10B80, 0x10B91, 0x10C00, 0x10C48, 0x10C80, 0x10CB2, 0x10CC0, 0x10CF2, 0x10D00, 0x10D23,
    0x10E80, 0x10EA9, 0x10EB0, 0x10EB1, 0x10F00, 0x10F1C, 0x10F27, 0x10F27, 0x10F30, 0x10F45,
    0x10F70, 0x10F81, 0x10FB0, 0x10FC4, 0x10FE0, 0x10FF6, 0x11003, 0x11037, 0x11071, 0x11072,
    0x11075, 0x11075, 0x11083, 0x110AF, 0x110D0, 0x110E8, 0x11103, 0x11126, 0x11144, 0x11144,
    0x11147, 0x11147, 0x11150, 0x11172, 0x11176, 0x11176, 0x11183, 0x111B2, 0x111C1, 0x111C4,
    0x111DA, 0x111DA, 0x111DC, 0x111DC, 0x11200, 0x11211, 0x11213, 0x1122B, 0x1123F, 0x11240,
    0x11280, 0x11286, 0x11288, 0x11288, 0x1128A, 0x1128D, 0x1128F, 0x1129D, 0x1129F, 0x112A8,
    0x112B0, 0x112DE, 0x11305, 0x1130C, 0x1130F, 0x11310, 0x11313, 0x11328, 0x1132A, 0x11330,
    0x11332, 0x11333, 0x11335, 0x11339, 0x1133D, 0x1133D, 0x11350, 0x11350, 0x1135D, 0x11361,
    0x11400, 0x11434, 0x11447, 0x1144A, 0x1145F, 0x11461, 0x11480, 0x114AF, 0x114C4, 0x114C5,
    0x114C7, 0x114C7, 0x11580, 0x115AE, 0x115D8, 0x115DB, 0x11600, 0x1162F, 0x11644, 0x11644,
    0x11680, 0x116AA, 0x116B8, 0x116B8, 0x11700, 0x1171A, 0x11740, 0x11746, 0x11800, 0x1182B,
    0x118A0, 0x118DF, 0x118FF, 0x11906, 0x11909, 0x11909, 0x1190C, 0x11913, 0x11915, 0x11916,
    0x11918, 0x1192F, 0x1193F, 0x1193F, 0x11941, 0x11941, 0x119A0, 0x119A7, 0x119AA, 0x119D0,
    0x119E1, 0x119E1, 0x119E3, 0x119E3, 0x11A00, 0x11A00, 0x11A0B, 0x11A32, 0x11A3A, 0x11A3A,
    0x11A50, 0x11A50, 0x11A5C, 0x11A89, 0x11A9D, 0x11A9D, 0x11AB0, 0x11AF8, 0x11C00, 0x11C08,
    0x11C0A, 0x11C2E, 0x11C40, 0x11C40, 0x11C72, 0x11C8F, 0x11D00, 0x11D06, 0x11D08, 0x11D09,
    0x11D0B, 0x11D30, 0x11D46, 0x11D46, 0x11D60, 0x11D65, 0x11D67, 0x11D68, 0x11D6A, 0x11D89,
    0x11D98, 0x11D98, 0x11EE0, 0x11EF2, 0x11F02, 0x11F02, 0x11F04, 0x11F10, 0x11F12, 0x11F33,
    0x11FB0, 0x11FB0, 0x12000, 0x12399, 0x12480, 0x12543, 0x12F90, 0x12FF0, 0x13000, 0x1342F,
    0x13441, 0x13446, 0x14400, 0x14646, 0x16800, 0x16A38, 0x16A40, 0x16A5E, 0x16A70, 0x16ABE,
    0x16AD0, 0x16AED, 0x16B00, 0x16B2F, 0x16B40, 0x16B43, 0x16B63, 0x16B77, 0x16B7D, 0x16B8F,
    0x16E40, 0x16E7F, 0x16F00, 0x16F4A, 0x16F50, 0x16F50, 0x16F93, 0x16F9F, 0x16FE0, 0x16FE1,
    0x16FE3, 0x16FE3, 0x17000, 0x187F7, 0x18800, 0x18CD5, 0x18D00, 0x18D08, 0x1AFF0, 0x1AFF3,
    0x1AFF5, 0x1AFFB, 0x1AFFD, 0x1AFFE, 0x1B000, 0x1B122, 0x1B132, 0x1B132, 0x1B150, 0x1B152,
    0x1B155, 0x1B155, 0x1B164, 0x1B167, 0x1B170, 0x1B2FB, 0x1BC00, 0x1BC6A, 0x1BC70, 0x1BC7C,
    0x1BC80, 0x1BC88, 0x1BC90, 0x1BC99, 0x1D400, 0x1D454, 0x1D456, 0x1D49C, 0x1D49E, 0x1D49F,
    0x1D4A2, 0x1D4A2, 0x1D4A5, 0x1D4A6, 0x1D4A9, 0x1D4AC, 0x1D4AE, 0x1D4B9, 0x1D4BB, 0x1D4BB,
    0x1D4BD, 0x1D4C3, 0x1D4C5, 0x1D505, 0x1D507, 0x1D50A, 0x1D50D, 0x1D514, 0x1D516, 0x1D51C,
    0x1D51E, 0x1D539, 0x1D53B, 0x1D53E, 0x1D540, 0x1D544, 0x1D546, 0x1D546, 0x1D54A, 0x1D550,
    0x1D552, 0x1D6A5, 0x1D6A8, 0x1D6C0, 0x1D6C2, 0x1D6DA, 0x1D6DC, 0x1D6FA, 0x1D6FC, 0x1D714,
    0x1D716, 0x1D734, 0x1D736, 0x1D74E, 0x1D750, 0x1D76E, 0x1D770, 0x1D788, 0x1D78A, 0x1D7A8,
    0x1D7AA, 0x1D7C2, 0x1D7C4, 0x1D7CB, 0x1DF00, 0x1DF1E, 0x1DF25, 0x1DF2A, 0x1E030, 0x1E06D,
    0x1E100, 0x1E12C, 0x1E137, 0x1E13D, 0x1E14E, 0x1E14E, 0x1E290, 0x1E2AD, 0x1E2C0, 0x1E2EB,
    0x1E4D0, 0x1E4EB, 0x1E7E0, 0x1E7E6, 0x1E7E8, 0x1E7EB, 0x1E7ED, 0x1E7EE, 0x1E7F0, 0x1E7FE,
    0x1E800, 0x1E8C4, 0x1E900, 0x1E943, 0x1E94B, 0x1E94B, 0x1EE00, 0x1EE03, 0x1EE05, 0x1EE1F,
    0x1EE21, 0x1EE22, 0x1EE24, 0x1EE24, 0x1EE27, 0x1EE27, 0x1EE29, 0x1EE32, 0x1EE34, 0x1EE37,
    0x1EE39, 0x1EE39, 0x1EE3B, 0x1EE3B, 0x1EE42, 0x1EE42, 0x1EE47, 0x1EE47, 0x1EE49, 0x1EE49,
    0x1EE4B, 0x1EE4B, 0x1EE4D, 0x1EE4F, 0x1EE51, 0x1EE52, 0x1EE54, 0x1EE54, 0x1EE57, 0x1EE57,
    0x1EE59, 0x1EE59, 0x1EE5B, 0x1EE5B, 0x1EE5D, 0x1EE5D, 0x1EE5F, 0x1EE5F, 0x1EE61, 0x1EE62,
    0x1EE64, 0x1EE64, 0x1EE67, 0x1EE6A, 0x1EE6C, 0x1EE72, 0x1EE74, 0x1EE77, 0x1EE79, 0x1EE7C,
    0x1EE7E, 0x1EE7E, 0x1EE80, 0x1EE89, 0x1EE8B, 0x1EE9B, 0x1EEA1, 0x1EEA3, 0x1EEA5, 0x1EEA9,
    0x1EEAB, 0x1EEBB, 0x20000, 0x2A6DF, 0x2A700, 0x2B739, 0x2B740, 0x2B81D, 0x2B820, 0x2CEA1,
    0x2CEB0, 0x2EBE0, 0x2F800, 0x2FA1D, 0x30000, 0x3134A, 0x31350, 0x323AF,
];

/// Non-ASCII code points of general category Nd, Unicode 15.0.0, as flattened
/// inclusive `start, end` pairs: Go's `unicode.IsDigit`.
const DECIMAL_DIGIT: &[u32] = &[
    0x0660, 0x0669, 0x06F0, 0x06F9, 0x07C0, 0x07C9, 0x0966, 0x096F, 0x09E6, 0x09EF, 0x0A66, 0x0A6F,
    0x0AE6, 0x0AEF, 0x0B66, 0x0B6F, 0x0BE6, 0x0BEF, 0x0C66, 0x0C6F, 0x0CE6, 0x0CEF, 0x0D66, 0x0D6F,
    0x0DE6, 0x0DEF, 0x0E50, 0x0E59, 0x0ED0, 0x0ED9, 0x0F20, 0x0F29, 0x1040, 0x1049, 0x1090, 0x1099,
    0x17E0, 0x17E9, 0x1810, 0x1819, 0x1946, 0x194F, 0x19D0, 0x19D9, 0x1A80, 0x1A89, 0x1A90, 0x1A99,
    0x1B50, 0x1B59, 0x1BB0, 0x1BB9, 0x1C40, 0x1C49, 0x1C50, 0x1C59, 0xA620, 0xA629, 0xA8D0, 0xA8D9,
    0xA900, 0xA909, 0xA9D0, 0xA9D9, 0xA9F0, 0xA9F9, 0xAA50, 0xAA59, 0xABF0, 0xABF9, 0xFF10, 0xFF19,
    0x104A0, 0x104A9, 0x10D30, 0x10D39, 0x11066, 0x1106F, 0x110F0, 0x110F9, 0x11136, 0x1113F,
    0x111D0, 0x111D9, 0x112F0, 0x112F9, 0x11450, 0x11459, 0x114D0, 0x114D9, 0x11650, 0x11659,
    0x116C0, 0x116C9, 0x11730, 0x11739, 0x118E0, 0x118E9, 0x11950, 0x11959, 0x11C50, 0x11C59,
    0x11D50, 0x11D59, 0x11DA0, 0x11DA9, 0x11F50, 0x11F59, 0x16A60, 0x16A69, 0x16AC0, 0x16AC9,
    0x16B50, 0x16B59, 0x1D7CE, 0x1D7FF, 0x1E140, 0x1E149, 0x1E2F0, 0x1E2F9, 0x1E4F0, 0x1E4F9,
    0x1E950, 0x1E959, 0x1FBF0, 0x1FBF9,
];
