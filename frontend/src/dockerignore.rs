//! The `.dockerignore` matcher: which files of the build context the build
//! never sees.
//!
//! Docker's rules are neither gitignore's nor a plain glob's, and users depend
//! on their corners, so this module reproduces moby/patternmatcher (what
//! BuildKit and the docker CLI call) and moby/patternmatcher/ignorefile rather
//! than approximating them:
//!
//! - [`parse_ignore_file`] reads the file: `#` comments (only at the very start
//!   of a line), blank lines, surrounding whitespace, a leading `/`, `! x`
//!   becoming `!x`, and Go's `filepath.Clean` on every pattern.
//! - [`Matcher::new`] validates each pattern with Go's `filepath.Match` rules
//!   ([`path_match`]) and compiles it once. Like Docker, a pattern is matched
//!   as an exact string, a prefix (`dir/**`), a suffix (`**/name`, and also the
//!   surprising `**name`, which matches `dir/myname`) or through the regular
//!   expression Docker derives from it. That expression is compiled here by a
//!   small engine that follows Go's RE2 syntax for everything a pattern can
//!   produce, quirks included: `[*]` or `[a?]` put Docker's `[^/]*` and `[^/]`
//!   inside the user's class, `\d` or `\b` mean what they mean to Go's regexp,
//!   `{`, `|` and `}` are left unescaped by Docker, so in a pattern that needs
//!   a regexp they are operators (`a|b*` is an alternation, unanchored on each
//!   side; `a{2}*` counts) while `*.{js,ts}` only matches that literal name,
//!   and an expression Go cannot compile (`[Local-Only]`, a range from `l` to
//!   `O`) is accepted by [`Matcher::new`] but fails every match that reaches
//!   it.
//! - Later patterns win; `!pattern` re-includes. A path is excluded when a
//!   pattern matches it or one of its parent directories
//!   ([`Matcher::matches_or_parent_matches`]). A tree walk uses
//!   [`Matcher::matches_using_parent`] instead, which carries each directory's
//!   per-pattern results down to its children (Docker's
//!   `MatchesUsingParentResults`, what BuildKit's file sync uses): cheaper, and
//!   the same answers except in the rare orderings where Docker's two entry
//!   points disagree too.
//!
//! Paths are context-relative and `/`-separated; the `_bytes` variants take
//! paths that are not UTF-8, which Go treats byte by byte.
//!
//! One deliberate gap: Go's `\p{…}` Unicode classes (reachable only by writing
//! `\p` or `\P` in a pattern) are not compiled; such a pattern fails to match
//! with [`IgnoreError::UnusablePattern`] instead of silently matching
//! differently.

use std::borrow::Cow;

/// The ignore file at the root of the build context.
pub const DEFAULT_IGNORE_FILE: &str = ".dockerignore";

/// The Dockerfile name BuildKit assumes when none is given.
const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// How many patterns a [`MatchInfo`] records inline; larger matchers recompute
/// a path's ancestors instead (same answers, more work).
const INLINE_PATTERNS: usize = 128;

/// Why a `.dockerignore` pattern cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// A pattern was `!` alone: an exception with nothing to re-include.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// A pattern that Go's `filepath.Match` rejects (unclosed `[`, a range
    /// like `[a-]`, a trailing `\`); Docker refuses the whole file.
    #[error("syntax error in pattern {pattern:?}")]
    BadPattern {
        /// The pattern as written (trimmed).
        pattern: String,
    },
    /// A pattern that passes the `filepath.Match` check but whose derived
    /// regular expression does not compile; like Docker, this is reported when
    /// the pattern is first needed for a match, not when it is read.
    #[error("syntax error in pattern {pattern:?}")]
    UnusablePattern {
        /// The pattern as written (trimmed).
        pattern: String,
        /// What is wrong with the expression derived from it.
        #[source]
        source: RegexError,
    },
    /// A [`MatchInfo`] from a matcher with a different number of patterns.
    #[error("parent match info covers {got} patterns but the matcher has {expected}")]
    MatchInfoMismatch {
        /// Patterns the info was made for.
        got: usize,
        /// Patterns in this matcher.
        expected: usize,
    },
}

/// Why the regular expression Docker derives from a pattern does not compile,
/// in the words of Go's `regexp/syntax` (e.g. ``invalid character class range:
/// `l-O` ``).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: `{expr}`")]
pub struct RegexError {
    kind: &'static str,
    expr: String,
}

impl RegexError {
    fn new(kind: &'static str, expr: &str) -> Self {
        RegexError {
            kind,
            expr: expr.to_owned(),
        }
    }
}

/// Which ignore files apply to a build, in priority order: the first that
/// exists is used and the others are not read.
///
/// `dockerfile_name` is the Dockerfile's name as BuildKit receives it
/// (`Dockerfile`, `build.Dockerfile`, `Dockerfile.api`); an empty name means
/// `Dockerfile`. The first candidate, `<dockerfile_name>.dockerignore`, sits
/// next to the Dockerfile (it keeps any directory part of the name); the last,
/// [`DEFAULT_IGNORE_FILE`], is at the root of the build context. A Dockerfile
/// read from stdin (`-`) has no directory of its own, so only the context's
/// `.dockerignore` applies.
pub fn ignore_file_candidates(dockerfile_name: &str) -> Vec<String> {
    let name = match dockerfile_name {
        "-" => return vec![DEFAULT_IGNORE_FILE.to_owned()],
        "" => DEFAULT_DOCKERFILE,
        name => name,
    };
    vec![
        format!("{name}{DEFAULT_IGNORE_FILE}"),
        DEFAULT_IGNORE_FILE.to_owned(),
    ]
}

/// Reads the text of a `.dockerignore` into patterns, exactly as Docker's
/// `ignorefile.ReadAll`: a UTF-8 byte-order mark is dropped, lines starting
/// with `#` are comments (a `#` after leading spaces is a pattern), surrounding
/// whitespace is trimmed, blank lines are skipped, each pattern is cleaned like
/// Go's `filepath.Clean` and loses one leading `/`, and `! x` becomes `!x`.
/// A lone `!` is kept; [`Matcher::new`] rejects it.
pub fn parse_ignore_file(text: &str) -> Vec<String> {
    let mut patterns = Vec::new();
    for (index, line) in scan_lines(text).enumerate() {
        let line = if index == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let (invert, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, pattern),
        };
        let mut pattern = if pattern.is_empty() {
            String::new()
        } else {
            clean_path(pattern)
        };
        if pattern.len() > 1 && pattern.starts_with('/') {
            pattern.remove(0);
        }
        if invert {
            pattern.insert(0, '!');
        }
        patterns.push(pattern);
    }
    patterns
}

/// Lines as Go's `bufio.ScanLines` yields them: split at `\n`, one trailing
/// `\r` dropped, no empty last line after a final newline.
fn scan_lines(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines = if text.is_empty() { None } else { Some(body) };
    lines
        .into_iter()
        .flat_map(|body| body.split('\n'))
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
}

/// The shortest path equivalent to `path`, by Go's `filepath.Clean` on Unix:
/// repeated `/` collapse, `.` elements go, `..` eats the element before it
/// (and is dropped at the root), a trailing `/` goes, and the empty path is
/// `.`.
pub fn clean_path(path: &str) -> String {
    match clean(path.as_bytes()) {
        Cow::Borrowed(_) => path.to_owned(),
        // Cleaning removes whole elements and ASCII bytes only, so the result
        // of cleaning UTF-8 is UTF-8.
        Cow::Owned(bytes) => String::from_utf8(bytes)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

/// Go's `filepath.Match` on `/`-separated paths: `*` is any run of non-`/`
/// characters, `?` one non-`/` character, `[...]`/`[^...]` a class of
/// characters and ranges, `\` escapes the next character. The whole of `name`
/// must match.
///
/// Malformed patterns give [`IgnoreError::BadPattern`] — unless the match has
/// already failed before the malformed part is reached, as in Go (`a*[`
/// against `b`).
///
/// This is the check [`Matcher::new`] applies to each pattern; matching
/// itself follows Docker's own rules, which differ (`**`, parent directories).
pub fn path_match(pattern: &str, name: &str) -> Result<bool, IgnoreError> {
    go_match(pattern.as_bytes(), name.as_bytes()).map_err(|BadPattern| IgnoreError::BadPattern {
        pattern: pattern.to_owned(),
    })
}

/// Compiled `.dockerignore` patterns, in order (later patterns win).
///
/// Compiling is done once in [`Matcher::new`]; matching takes `&self`, so one
/// matcher can serve many threads.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// Per-pattern results for one directory, handed to its children by a tree
/// walk (see [`Matcher::matches_using_parent`]).
///
/// The default value means "no information about the parent": pass it for the
/// entries at the root of the context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchInfo {
    /// Bit `i`: pattern `i` matched the directory or one of its ancestors.
    bits: u128,
    /// Number of patterns of the matcher that made this; 0 for no information.
    patterns: usize,
}

impl Matcher {
    /// Compiles `patterns` (as [`parse_ignore_file`] returns them) the way
    /// Docker's `patternmatcher.New` does: each is trimmed and cleaned, empty
    /// ones are skipped, a leading `!` makes an exception, and each must pass
    /// Go's `filepath.Match` syntax check.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, IgnoreError> {
        let mut matcher = Matcher::default();
        for written in patterns {
            let written = written.as_ref().trim();
            if written.is_empty() {
                continue;
            }
            let cleaned = clean_path(written);
            let (exclusion, cleaned) = match cleaned.strip_prefix('!') {
                Some("") => return Err(IgnoreError::IllegalExclusion),
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            if go_match(cleaned.as_bytes(), b".").is_err() {
                return Err(IgnoreError::BadPattern {
                    pattern: written.to_owned(),
                });
            }
            matcher.exclusions |= exclusion;
            matcher.patterns.push(Pattern {
                written: written.to_owned(),
                dirs: cleaned.split('/').count(),
                kind: compile_pattern(&cleaned),
                cleaned,
                exclusion,
            });
        }
        Ok(matcher)
    }

    /// No patterns: nothing is ignored.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// How many patterns the matcher holds (empty lines not counted).
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Some pattern is an exception (`!pattern`): a walk must not skip an
    /// ignored directory, since something inside it may be re-included.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// The patterns as compiled, in order: the cleaned pattern without its
    /// `!`, and whether it is an exception.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.patterns
            .iter()
            .map(|pattern| (pattern.cleaned.as_str(), pattern.exclusion))
    }

    /// Docker's deprecated `PatternMatcher.Matches`: like
    /// [`matches_or_parent_matches`](Self::matches_or_parent_matches) but it
    /// only tries the one ancestor with as many elements as the pattern.
    /// Kept for conformance; use the other methods to decide what to send.
    pub fn matches(&self, path: &str) -> Result<bool, IgnoreError> {
        let path = path.as_bytes();
        let parent = go_dir(path);
        let has_parent = parent.as_ref() != b".";
        let parent_elements = parent.iter().filter(|&&b| b == b'/').count() + 1;
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.is_match(path)?;
            if !hit && has_parent && pattern.dirs <= parent_elements {
                let ancestor = leading_elements(&parent[..], pattern.dirs);
                hit = pattern.is_match(ancestor).unwrap_or(false);
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Whether `path` (context-relative, `/`-separated) is ignored: the last
    /// pattern that matches it or one of its parent directories decides, and
    /// an exception re-includes. Docker's `MatchesOrParentMatches`.
    pub fn matches_or_parent_matches(&self, path: &str) -> Result<bool, IgnoreError> {
        self.matches_or_parent_matches_bytes(path.as_bytes())
    }

    /// [`matches_or_parent_matches`](Self::matches_or_parent_matches) for a
    /// path that need not be UTF-8.
    pub fn matches_or_parent_matches_bytes(&self, path: &[u8]) -> Result<bool, IgnoreError> {
        let mut unused = 0u128;
        self.step(path, None::<&u128>, &mut unused)
    }

    /// Whether `path` is ignored, given `parent`: the [`MatchInfo`] returned
    /// for its parent directory, or `MatchInfo::default()` for a path at the
    /// root of the context. Returns the answer and the info to pass to
    /// `path`'s children if it is a directory.
    ///
    /// This is Docker's `MatchesUsingParentResults`: a pattern that matched a
    /// directory is not tried again below it, so each path costs one match
    /// per pattern. Its answers equal
    /// [`matches_or_parent_matches`](Self::matches_or_parent_matches) for
    /// usual pattern lists; they differ, as in Docker, when an exception was
    /// skipped at a directory because nothing was excluded yet there (with
    /// `d/f` then `!d`, the walk ignores `d/f`, the other method keeps it).
    ///
    /// With more than 128 patterns the info cannot hold every result, and the
    /// walk from the context root down to `path` is recomputed instead (same
    /// answers, more work).
    pub fn matches_using_parent(
        &self,
        path: &str,
        parent: MatchInfo,
    ) -> Result<(bool, MatchInfo), IgnoreError> {
        self.matches_using_parent_bytes(path.as_bytes(), parent)
    }

    /// [`matches_using_parent`](Self::matches_using_parent) for a path that
    /// need not be UTF-8.
    pub fn matches_using_parent_bytes(
        &self,
        path: &[u8],
        parent: MatchInfo,
    ) -> Result<(bool, MatchInfo), IgnoreError> {
        let count = self.patterns.len();
        if parent.patterns != 0 && parent.patterns != count {
            return Err(IgnoreError::MatchInfoMismatch {
                got: parent.patterns,
                expected: count,
            });
        }
        let known = parent.patterns != 0;
        if count <= INLINE_PATTERNS {
            let mut bits = 0u128;
            let matched = self.step(path, known.then_some(&parent.bits), &mut bits)?;
            return Ok((
                matched,
                MatchInfo {
                    bits,
                    patterns: count,
                },
            ));
        }
        // Too many patterns to carry: replay the walk from the root.
        let mut flags: Option<Vec<bool>> = None;
        if known {
            for end in slash_positions(path) {
                let ancestor = path.get(..end).unwrap_or_default();
                let mut next = vec![false; count];
                self.step(ancestor, flags.as_ref(), &mut next)?;
                flags = Some(next);
            }
        }
        let mut last = vec![false; count];
        let matched = self.step(path, flags.as_ref(), &mut last)?;
        Ok((
            matched,
            MatchInfo {
                bits: 0,
                patterns: count,
            },
        ))
    }

    /// One step of Docker's `MatchesUsingParentResults`; with no parent
    /// information it is `MatchesOrParentMatches`.
    fn step<F: Flags>(
        &self,
        path: &[u8],
        parent: Option<&F>,
        out: &mut F,
    ) -> Result<bool, IgnoreError> {
        let mut matched = false;
        let mut parent_dir: Option<Cow<'_, [u8]>> = None;
        for (index, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|flags| flags.flag(index));
            if !hit {
                // An inclusion cannot change an excluded path, nor an
                // exception an included one.
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.is_match(path)?;
                if !hit && parent.is_none() {
                    let dir = parent_dir.get_or_insert_with(|| go_dir(path));
                    if dir.as_ref() != b"." {
                        hit = ancestors(&dir[..])
                            .any(|ancestor| pattern.is_match(ancestor).unwrap_or(false));
                    }
                }
            }
            if hit {
                out.set_flag(index);
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }
}

/// Per-pattern results of a walk step.
trait Flags {
    fn flag(&self, index: usize) -> bool;
    fn set_flag(&mut self, index: usize);
}

impl Flags for u128 {
    fn flag(&self, index: usize) -> bool {
        index < INLINE_PATTERNS && (self >> index) & 1 == 1
    }

    fn set_flag(&mut self, index: usize) {
        if index < INLINE_PATTERNS {
            *self |= 1 << index;
        }
    }
}

impl Flags for Vec<bool> {
    fn flag(&self, index: usize) -> bool {
        self.get(index).copied().unwrap_or(false)
    }

    fn set_flag(&mut self, index: usize) {
        if let Some(flag) = self.get_mut(index) {
            *flag = true;
        }
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
struct Pattern {
    /// As written (trimmed), for error messages.
    written: String,
    /// Cleaned, without the `!`.
    cleaned: String,
    /// Number of `/`-separated elements of `cleaned`.
    dirs: usize,
    exclusion: bool,
    kind: Kind,
}

/// How Docker matches a pattern (its `matchType`).
#[derive(Debug, Clone)]
enum Kind {
    /// No wildcards: the path equals the pattern.
    Exact,
    /// Wildcard-free up to a final `**`: the path starts with what precedes it.
    Prefix,
    /// Starts with `**` and has no other wildcard: the path ends with what
    /// follows it (`**/name` also matches `name` itself).
    Suffix,
    /// Everything else.
    Regex(regex::Program),
    /// The derived expression does not compile; every match attempt fails.
    Broken(RegexError),
}

impl Pattern {
    fn is_match(&self, path: &[u8]) -> Result<bool, IgnoreError> {
        let pattern = self.cleaned.as_bytes();
        match &self.kind {
            Kind::Exact => Ok(path == pattern),
            Kind::Prefix => {
                let prefix = pattern
                    .get(..pattern.len().saturating_sub(2))
                    .unwrap_or_default();
                Ok(path.starts_with(prefix))
            }
            Kind::Suffix => {
                let suffix = pattern.get(2..).unwrap_or_default();
                Ok(path.ends_with(suffix) || suffix.split_first() == Some((&b'/', path)))
            }
            Kind::Regex(program) => Ok(program.is_match(path)),
            Kind::Broken(error) => Err(IgnoreError::UnusablePattern {
                pattern: self.written.clone(),
                source: error.clone(),
            }),
        }
    }
}

/// Docker's `Pattern.compile`: classifies a cleaned pattern and, when it needs
/// one, builds the same regular expression Docker does.
fn compile_pattern(cleaned: &str) -> Kind {
    #[derive(PartialEq)]
    enum Found {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut chars = cleaned.chars().peekable();
    // Go's text/scanner skips a byte-order mark at the start.
    if chars.peek() == Some(&'\u{feff}') {
        chars.next();
    }
    let mut expr = String::with_capacity(2 * cleaned.len() + 2);
    expr.push('^');
    let mut found = Found::Exact;
    let mut first = true;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if found == Found::Exact {
                        found = Found::Prefix;
                    } else {
                        expr.push_str(".*");
                        found = Found::Regex;
                    }
                } else {
                    // Any number of whole elements, including none.
                    expr.push_str("(.*/)?");
                    found = Found::Regex;
                }
                if first {
                    found = Found::Suffix;
                }
            }
            '*' => {
                expr.push_str("[^/]*");
                found = Found::Regex;
            }
            '?' => {
                expr.push_str("[^/]");
                found = Found::Regex;
            }
            // Special to a regular expression but not to a glob. Docker means
            // to escape `{`, `|` and `}` too, but its bitmap of characters to
            // escape overflows above `?` (0x3F), so those reach the regexp
            // as operators: `a|b*` is an alternation, `a{2}*` a count.
            '.' | '+' | '(' | ')' | '$' => {
                expr.push('\\');
                expr.push(ch);
            }
            '\\' => match chars.next() {
                Some(escaped) => {
                    expr.push('\\');
                    expr.push(escaped);
                    found = Found::Regex;
                }
                None => expr.push('\\'),
            },
            '[' | ']' => {
                expr.push(ch);
                found = Found::Regex;
            }
            _ => expr.push(ch),
        }
        first = false;
    }
    match found {
        Found::Exact => Kind::Exact,
        Found::Prefix => Kind::Prefix,
        Found::Suffix => Kind::Suffix,
        Found::Regex => {
            expr.push('$');
            match regex::Program::new(&expr) {
                Ok(program) => Kind::Regex(program),
                Err(error) => Kind::Broken(error),
            }
        }
    }
}

// --- Go path helpers -------------------------------------------------------

/// Go's `filepath.Clean` on Unix; borrows when `path` is already clean.
fn clean(path: &[u8]) -> Cow<'_, [u8]> {
    if is_clean(path) {
        return Cow::Borrowed(path);
    }
    let n = path.len();
    let rooted = path.first() == Some(&b'/');
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let (mut r, mut dotdot) = (0, 0);
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    let at = |i: usize| path.get(i).copied();
    while r < n {
        let ends_element = |i: usize| i == n || at(i) == Some(b'/');
        if at(r) == Some(b'/') || (at(r) == Some(b'.') && ends_element(r + 1)) {
            // An empty or `.` element.
            r += 1;
        } else if at(r) == Some(b'.') && at(r + 1) == Some(b'.') && ends_element(r + 2) {
            r += 2;
            if out.len() > dotdot {
                let mut w = out.len() - 1;
                while w > dotdot && out.get(w) != Some(&b'/') {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while let Some(byte) = at(r).filter(|&b| b != b'/') {
                out.push(byte);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        out.push(b'.');
    }
    Cow::Owned(out)
}

/// Whether [`clean`] would return `path` unchanged.
fn is_clean(path: &[u8]) -> bool {
    if path == b"/" || path == b"." {
        return true;
    }
    if path.is_empty() || path.ends_with(b"/") {
        return false;
    }
    let rooted = path.first() == Some(&b'/');
    let body = if rooted { &path[1..] } else { path };
    let mut leading_dotdots = !rooted;
    for element in body.split(|&b| b == b'/') {
        match element {
            b"" | b"." => return false,
            b".." if leading_dotdots => {}
            b".." => return false,
            _ => leading_dotdots = false,
        }
    }
    true
}

/// Go's `filepath.Dir`: everything before the last `/`, cleaned; `.` when
/// there is no `/`.
fn go_dir(path: &[u8]) -> Cow<'_, [u8]> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(last) => clean(path.get(..=last).unwrap_or_default()),
        None => Cow::Borrowed(b"."),
    }
}

/// Byte offsets of each `/` in `path`.
fn slash_positions(path: &[u8]) -> impl Iterator<Item = usize> + '_ {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| i)
}

/// `dir` and each of its ancestors, shortest first, as Docker builds them by
/// splitting at `/` and re-joining the first 1, 2, … elements.
fn ancestors(dir: &[u8]) -> impl Iterator<Item = &[u8]> {
    slash_positions(dir)
        .map(move |end| dir.get(..end).unwrap_or_default())
        .chain(std::iter::once(dir))
}

/// The first `count` `/`-separated elements of `path`, re-joined.
fn leading_elements(path: &[u8], count: usize) -> &[u8] {
    match slash_positions(path).nth(count.saturating_sub(1)) {
        Some(end) => path.get(..end).unwrap_or_default(),
        None => path,
    }
}

/// Go's `utf8.DecodeRune`: the rune at the start of `bytes` and its width;
/// an invalid or truncated sequence is U+FFFD of width 1, empty input width 0.
fn decode_rune(bytes: &[u8]) -> (u32, usize) {
    const RUNE_ERROR: u32 = 0xFFFD;
    let Some(&lead) = bytes.first() else {
        return (RUNE_ERROR, 0);
    };
    let width = match lead {
        0x00..=0x7F => return (u32::from(lead), 1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (RUNE_ERROR, 1),
    };
    match bytes
        .get(..width)
        .and_then(|seq| std::str::from_utf8(seq).ok())
        .and_then(|s| s.chars().next())
    {
        Some(ch) => (u32::from(ch), width),
        None => (RUNE_ERROR, 1),
    }
}

// --- Go filepath.Match -----------------------------------------------------

/// A malformed `filepath.Match` pattern.
#[derive(Debug)]
struct BadPattern;

/// Go's `filepath.Match` with `/` as separator and `\` escapes.
fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest unless it holds a `/`.
            return Ok(!name.contains(&b'/'));
        }
        match match_chunk(chunk, name)? {
            Some(after) if after.is_empty() || !pattern.is_empty() => {
                name = after;
                continue;
            }
            _ => {}
        }
        if star {
            // Let the star eat 1, 2, … bytes, never a `/`.
            let mut i = 0;
            while i < name.len() && name.get(i) != Some(&b'/') {
                if let Some(after) = match_chunk(chunk, name.get(i + 1..).unwrap_or_default())? {
                    // The last chunk must use up the name.
                    if pattern.is_empty() && !after.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = after;
                    continue 'pattern;
                }
                i += 1;
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off the next chunk: optional leading stars, then everything up to
/// the next star outside a class.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    let mut pattern = pattern;
    while let Some((b'*', rest)) = pattern.split_first() {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while let Some(&byte) = pattern.get(i) {
        match byte {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => return (star, &pattern[..i], &pattern[i..]),
            _ => {}
        }
        i += 1;
    }
    (star, pattern, &[])
}

/// Matches a star-free chunk against the start of `s`: `Some(rest)` on a
/// match, `None` otherwise. Once the match has failed the rest of the chunk is
/// still parsed, so a malformed chunk is always reported.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&op) = chunk.first() {
        failed = failed || s.is_empty();
        match op {
            b'[' => {
                let mut rune = 0;
                if !failed {
                    let (r, width) = decode_rune(s);
                    rune = r;
                    s = s.get(width..).unwrap_or_default();
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut in_class = false;
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chunk.first() == Some(&b']') {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (end, rest) = class_char(&chunk[1..])?;
                        hi = end;
                        chunk = rest;
                    }
                    in_class = in_class || (lo <= rune && rune <= hi);
                    ranges += 1;
                }
                failed = failed || in_class == negated;
            }
            b'?' => {
                if !failed {
                    failed = s.first() == Some(&b'/');
                    let (_, width) = decode_rune(s);
                    s = s.get(width..).unwrap_or_default();
                }
                chunk = &chunk[1..];
            }
            _ => {
                if op == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    failed = chunk.first() != s.first();
                    s = s.get(1..).unwrap_or_default();
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// Go's `getEsc`: one possibly escaped character of a class, which must be
/// followed by something.
fn class_char(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let chunk = match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => &chunk[1..],
        Some(_) => chunk,
    };
    if chunk.is_empty() {
        return Err(BadPattern);
    }
    let (rune, width) = decode_rune(chunk);
    let rest = chunk.get(width..).unwrap_or_default();
    if (rune == 0xFFFD && width == 1) || rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((rune, rest))
}

// --- Go regexp, the part a pattern can reach --------------------------------

/// The subset of Go's RE2 syntax (Perl flags: `.` excludes `\n`, negated
/// classes include it, `^`/`$` are text anchors) that Docker's translation of
/// a pattern can produce, compiled to a small program and run as a Pike VM:
/// a match is linear in the path length times the program size, and needs
/// memory only for the program.
mod regex {
    use super::{decode_rune, RegexError};

    const MAX_RUNE: u32 = 0x10FFFF;
    const RUNE_ERROR: u32 = 0xFFFD;
    /// Go's limit on nesting.
    const MAX_DEPTH: usize = 1000;
    /// Go's limit on a repetition count (and on nested counts multiplied).
    const MAX_REPEAT: u32 = 1000;
    /// Instructions a program may have (Go refuses huge expressions too).
    const MAX_INSTS: usize = 1 << 20;

    type Ranges = Vec<(u32, u32)>;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Look {
        BeginText,
        EndText,
        WordBoundary,
        NotWordBoundary,
    }

    #[derive(Debug, Clone, Copy)]
    enum Rep {
        Star,
        Plus,
        Quest,
        /// `{min}`, `{min,}` (`max` is `None`) or `{min,max}`.
        Count {
            min: u32,
            max: Option<u32>,
        },
    }

    #[derive(Debug)]
    enum Node {
        Empty,
        Rune(u32),
        Class(Ranges),
        AnyNotNl,
        Look(Look),
        Concat(Vec<Node>),
        Alt(Vec<Node>),
        Repeat(Box<Node>, Rep),
    }

    #[derive(Debug, Clone)]
    enum Inst {
        Rune(u32),
        Class(Box<[(u32, u32)]>),
        AnyNotNl,
        Look(Look),
        Split(usize, usize),
        Jmp(usize),
        Match,
    }

    /// A compiled expression.
    #[derive(Debug, Clone)]
    pub(super) struct Program {
        insts: Vec<Inst>,
        hints: Hints,
    }

    impl Program {
        pub(super) fn new(expr: &str) -> Result<Self, RegexError> {
            let mut parser = Parser {
                src: expr,
                pos: 0,
                depth: 0,
            };
            let node = parser.parse_alt()?;
            if parser.pos < expr.len() {
                return Err(RegexError::new("unexpected )", expr));
            }
            let hints = Hints::of(&node);
            let mut insts = Vec::new();
            if !emit(&node, &mut insts) {
                return Err(RegexError::new("expression too large", expr));
            }
            insts.push(Inst::Match);
            Ok(Program { insts, hints })
        }

        pub(super) fn is_match(&self, text: &[u8]) -> bool {
            if !self.hints.admits(text) {
                return false;
            }
            let anchored = self.hints.anchored;
            let mut current = Threads::new(self.insts.len());
            let mut next = Threads::new(self.insts.len());
            let mut stack = Vec::new();
            let mut pos = 0;
            loop {
                if (pos == 0 || !anchored) && self.add(&mut current, &mut stack, 0, text, pos) {
                    return true;
                }
                if pos >= text.len() || (anchored && current.list.is_empty()) {
                    return false;
                }
                let (rune, width) = decode_rune(text.get(pos..).unwrap_or_default());
                let after = pos + width.max(1);
                for &pc in &current.list {
                    let consumes = match self.insts.get(pc) {
                        Some(Inst::Rune(want)) => rune == *want,
                        Some(Inst::Class(ranges)) => class_contains(ranges, rune),
                        Some(Inst::AnyNotNl) => rune != u32::from(b'\n'),
                        _ => false,
                    };
                    if consumes && self.add(&mut next, &mut stack, pc + 1, text, after) {
                        return true;
                    }
                }
                std::mem::swap(&mut current, &mut next);
                next.clear();
                pos = after;
            }
        }

        /// Adds `pc` and everything reachable from it without consuming input
        /// at `pos`; true when that reaches a match.
        fn add(
            &self,
            threads: &mut Threads,
            stack: &mut Vec<usize>,
            pc: usize,
            text: &[u8],
            pos: usize,
        ) -> bool {
            stack.clear();
            stack.push(pc);
            while let Some(pc) = stack.pop() {
                if !threads.insert(pc) {
                    continue;
                }
                match self.insts.get(pc) {
                    Some(Inst::Match) => return true,
                    Some(Inst::Jmp(to)) => stack.push(*to),
                    Some(Inst::Split(first, second)) => {
                        stack.push(*second);
                        stack.push(*first);
                    }
                    Some(Inst::Look(look)) if look_holds(*look, text, pos) => {
                        stack.push(pc + 1);
                    }
                    _ => {}
                }
            }
            false
        }
    }

    /// The set of program counters alive at one position.
    struct Threads {
        list: Vec<usize>,
        member: Vec<bool>,
    }

    impl Threads {
        fn new(size: usize) -> Self {
            Threads {
                list: Vec::new(),
                member: vec![false; size],
            }
        }

        fn insert(&mut self, pc: usize) -> bool {
            match self.member.get_mut(pc) {
                Some(member) if !*member => {
                    *member = true;
                    self.list.push(pc);
                    true
                }
                _ => false,
            }
        }

        fn clear(&mut self) {
            for pc in self.list.drain(..) {
                if let Some(member) = self.member.get_mut(pc) {
                    *member = false;
                }
            }
        }
    }

    fn class_contains(ranges: &[(u32, u32)], rune: u32) -> bool {
        ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < rune {
                    std::cmp::Ordering::Less
                } else if lo > rune {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    fn look_holds(look: Look, text: &[u8], pos: usize) -> bool {
        // Go's \b is ASCII-only, so the neighbouring bytes decide.
        let word =
            |byte: Option<&u8>| byte.is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
        let boundary = || {
            let before = pos.checked_sub(1).and_then(|i| text.get(i));
            word(before) != word(text.get(pos))
        };
        match look {
            Look::BeginText => pos == 0,
            Look::EndText => pos == text.len(),
            Look::WordBoundary => boundary(),
            Look::NotWordBoundary => !boundary(),
        }
    }

    /// What every match must look like, from the top-level sequence.
    #[derive(Debug, Clone, Default)]
    struct Hints {
        /// Starts with `^`: only position 0 can start a match.
        anchored: bool,
        /// Bytes every matching path starts with (after `^`).
        prefix: Vec<u8>,
        /// Bytes every matching path ends with (before `$`).
        suffix: Vec<u8>,
        /// Bytes every matching path contains somewhere, when longer than
        /// both of the above.
        inner: Vec<u8>,
    }

    impl Hints {
        fn of(node: &Node) -> Self {
            let items = match node {
                Node::Concat(items) => items.as_slice(),
                other => std::slice::from_ref(other),
            };
            let literal = |node: &Node| match node {
                // U+FFFD also matches invalid bytes, so it is no byte literal.
                Node::Rune(rune) if *rune != RUNE_ERROR => char::from_u32(*rune),
                _ => None,
            };
            let encode = |chars: &[char]| {
                let mut bytes = Vec::new();
                for ch in chars {
                    bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                bytes
            };
            let mut hints = Hints {
                anchored: matches!(items.first(), Some(Node::Look(Look::BeginText))),
                ..Hints::default()
            };
            if hints.anchored {
                let chars: Vec<char> = items.iter().skip(1).map_while(literal).collect();
                hints.prefix = encode(&chars);
            }
            if let Some((Node::Look(Look::EndText), body)) = items.split_last() {
                let mut chars: Vec<char> = body.iter().rev().map_while(literal).collect();
                chars.reverse();
                hints.suffix = encode(&chars);
            }
            let mut run: Vec<char> = Vec::new();
            let mut longest: Vec<char> = Vec::new();
            for item in items {
                match literal(item) {
                    Some(ch) => run.push(ch),
                    None => run.clear(),
                }
                if run.len() > longest.len() {
                    longest.clone_from(&run);
                }
            }
            let inner = encode(&longest);
            if inner.len() > hints.prefix.len() && inner.len() > hints.suffix.len() {
                hints.inner = inner;
            }
            hints
        }

        /// A cheap necessary condition for a match.
        fn admits(&self, text: &[u8]) -> bool {
            text.starts_with(&self.prefix)
                && text.ends_with(&self.suffix)
                && contains(text, &self.inner)
        }
    }

    /// Whether `needle` occurs in `haystack`.
    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        let Some((&first, rest)) = needle.split_first() else {
            return true;
        };
        let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
            return false;
        };
        haystack
            .iter()
            .take(last_start + 1)
            .enumerate()
            .any(|(at, &byte)| {
                byte == first && haystack.get(at + 1..at + needle.len()) == Some(rest)
            })
    }

    /// Appends the instructions for `node`; false when the program grows
    /// past [`MAX_INSTS`].
    fn emit(node: &Node, insts: &mut Vec<Inst>) -> bool {
        if insts.len() > MAX_INSTS {
            return false;
        }
        match node {
            Node::Empty => {}
            Node::Rune(rune) => insts.push(Inst::Rune(*rune)),
            Node::Class(ranges) => insts.push(Inst::Class(ranges.clone().into_boxed_slice())),
            Node::AnyNotNl => insts.push(Inst::AnyNotNl),
            Node::Look(look) => insts.push(Inst::Look(*look)),
            Node::Concat(items) => {
                for item in items {
                    if !emit(item, insts) {
                        return false;
                    }
                }
            }
            Node::Alt(branches) => {
                let mut exits = Vec::new();
                let last = branches.len().saturating_sub(1);
                for (index, branch) in branches.iter().enumerate() {
                    if index == last {
                        if !emit(branch, insts) {
                            return false;
                        }
                        break;
                    }
                    let split = insts.len();
                    insts.push(Inst::Split(0, 0));
                    if !emit(branch, insts) {
                        return false;
                    }
                    exits.push(insts.len());
                    insts.push(Inst::Jmp(0));
                    let next = insts.len();
                    insts[split] = Inst::Split(split + 1, next);
                }
                let end = insts.len();
                for exit in exits {
                    insts[exit] = Inst::Jmp(end);
                }
            }
            Node::Repeat(inner, Rep::Star) => {
                let split = insts.len();
                insts.push(Inst::Split(0, 0));
                if !emit(inner, insts) {
                    return false;
                }
                insts.push(Inst::Jmp(split));
                insts[split] = Inst::Split(split + 1, insts.len());
            }
            Node::Repeat(inner, Rep::Plus) => {
                let start = insts.len();
                if !emit(inner, insts) {
                    return false;
                }
                let split = insts.len();
                insts.push(Inst::Split(start, split + 1));
            }
            Node::Repeat(inner, Rep::Quest) => {
                let split = insts.len();
                insts.push(Inst::Split(0, 0));
                if !emit(inner, insts) {
                    return false;
                }
                insts[split] = Inst::Split(split + 1, insts.len());
            }
            Node::Repeat(inner, Rep::Count { min, max }) => {
                // `x{2,4}` is `xxx?x?`, `x{2,}` is `xxx*`.
                for _ in 0..*min {
                    if !emit(inner, insts) {
                        return false;
                    }
                }
                let (rep, extra) = match max {
                    None => (Rep::Star, 1),
                    Some(max) => (Rep::Quest, max.saturating_sub(*min)),
                };
                for _ in 0..extra {
                    let split = insts.len();
                    insts.push(Inst::Split(0, 0));
                    if !emit(inner, insts) {
                        return false;
                    }
                    if matches!(rep, Rep::Star) {
                        insts.push(Inst::Jmp(split));
                    }
                    insts[split] = Inst::Split(split + 1, insts.len());
                }
            }
        }
        insts.len() <= MAX_INSTS
    }

    struct Parser<'a> {
        src: &'a str,
        pos: usize,
        depth: usize,
    }

    impl<'a> Parser<'a> {
        fn rest(&self) -> &'a str {
            self.src.get(self.pos..).unwrap_or_default()
        }

        fn peek(&self) -> Option<u8> {
            self.src.as_bytes().get(self.pos).copied()
        }

        fn parse_alt(&mut self) -> Result<Node, RegexError> {
            let mut branches = vec![self.parse_concat()?];
            while self.peek() == Some(b'|') {
                self.pos += 1;
                branches.push(self.parse_concat()?);
            }
            Ok(if branches.len() == 1 {
                branches.pop().unwrap_or(Node::Empty)
            } else {
                Node::Alt(branches)
            })
        }

        fn parse_concat(&mut self) -> Result<Node, RegexError> {
            let mut items: Vec<Node> = Vec::new();
            let mut after_repeat = false;
            while let Some(byte) = self.peek() {
                let rest = self.rest();
                match byte {
                    b'|' | b')' => break,
                    b'*' | b'+' | b'?' => {
                        let rep = match byte {
                            b'*' => Rep::Star,
                            b'+' => Rep::Plus,
                            _ => Rep::Quest,
                        };
                        let mut len = 1;
                        if rest.as_bytes().get(1) == Some(&b'?') {
                            len = 2; // non-greedy: same answer for a yes/no match
                        }
                        let op = rest.get(..len).unwrap_or_default();
                        if after_repeat {
                            return Err(RegexError::new("invalid nested repetition operator", op));
                        }
                        let Some(last) = items.pop() else {
                            return Err(RegexError::new(
                                "missing argument to repetition operator",
                                op,
                            ));
                        };
                        if repeat_depth(&last) >= MAX_DEPTH {
                            return Err(RegexError::new("expression nests too deeply", self.src));
                        }
                        items.push(Node::Repeat(Box::new(last), rep));
                        self.pos += len;
                        after_repeat = true;
                        continue;
                    }
                    b'(' => {
                        if rest.as_bytes().get(1) == Some(&b'?') {
                            return Err(RegexError::new("unsupported group syntax", rest));
                        }
                        self.depth += 1;
                        if self.depth > MAX_DEPTH {
                            return Err(RegexError::new("expression nests too deeply", self.src));
                        }
                        self.pos += 1;
                        let inner = self.parse_alt()?;
                        if self.peek() != Some(b')') {
                            return Err(RegexError::new("missing closing )", self.src));
                        }
                        self.pos += 1;
                        self.depth -= 1;
                        items.push(inner);
                    }
                    b'.' => {
                        self.pos += 1;
                        items.push(Node::AnyNotNl);
                    }
                    b'^' => {
                        self.pos += 1;
                        items.push(Node::Look(Look::BeginText));
                    }
                    b'$' => {
                        self.pos += 1;
                        items.push(Node::Look(Look::EndText));
                    }
                    b'[' => items.push(self.parse_class()?),
                    b'{' => {
                        let Some((min, max, mut len)) = parse_count(rest) else {
                            // Not a count: a literal `{`.
                            self.pos += 1;
                            items.push(Node::Rune(u32::from('{')));
                            after_repeat = false;
                            continue;
                        };
                        let op = rest.get(..len).unwrap_or_default();
                        if min > MAX_REPEAT || max.is_some_and(|max| max > MAX_REPEAT || min > max)
                        {
                            return Err(RegexError::new("invalid repeat count", op));
                        }
                        if rest.as_bytes().get(len) == Some(&b'?') {
                            len += 1; // non-greedy
                        }
                        if after_repeat {
                            return Err(RegexError::new("invalid nested repetition operator", op));
                        }
                        let Some(last) = items.pop() else {
                            return Err(RegexError::new(
                                "missing argument to repetition operator",
                                op,
                            ));
                        };
                        let node = Node::Repeat(Box::new(last), Rep::Count { min, max });
                        if (min >= 2 || max.is_some_and(|max| max >= 2))
                            && !repeat_is_valid(&node, MAX_REPEAT)
                        {
                            return Err(RegexError::new("invalid repeat count", op));
                        }
                        items.push(node);
                        self.pos += len;
                        after_repeat = true;
                        continue;
                    }
                    b'\\' => self.parse_escape_atom(&mut items)?,
                    _ => {
                        let ch = rest.chars().next().unwrap_or_default();
                        self.pos += ch.len_utf8().max(1);
                        items.push(Node::Rune(u32::from(ch)));
                    }
                }
                after_repeat = false;
            }
            Ok(match items.len() {
                0 => Node::Empty,
                1 => items.pop().unwrap_or(Node::Empty),
                _ => Node::Concat(items),
            })
        }

        /// A `\` outside a class: assertion, `\Q…\E`, Perl class or escaped
        /// character.
        fn parse_escape_atom(&mut self, items: &mut Vec<Node>) -> Result<(), RegexError> {
            let rest = self.rest();
            let look = match rest.as_bytes().get(1) {
                Some(b'A') => Some(Look::BeginText),
                Some(b'z') => Some(Look::EndText),
                Some(b'b') => Some(Look::WordBoundary),
                Some(b'B') => Some(Look::NotWordBoundary),
                Some(b'C') => return Err(RegexError::new("invalid escape sequence", "\\C")),
                Some(b'Q') => {
                    // Everything up to `\E` (or the end) is literal.
                    let body = rest.get(2..).unwrap_or_default();
                    let (literal, used) = match body.find("\\E") {
                        Some(end) => (&body[..end], end + 2),
                        None => (body, body.len()),
                    };
                    items.extend(literal.chars().map(|ch| Node::Rune(u32::from(ch))));
                    self.pos += 2 + used;
                    return Ok(());
                }
                _ => None,
            };
            if let Some(look) = look {
                items.push(Node::Look(look));
                self.pos += 2;
                return Ok(());
            }
            if rest.starts_with("\\p") || rest.starts_with("\\P") {
                return Err(unicode_class_error(rest));
            }
            if let Some((negated, group)) = perl_group(rest) {
                let mut ranges = Vec::new();
                add_group(&mut ranges, negated, group);
                items.push(class_node(ranges));
                self.pos += 2;
                return Ok(());
            }
            let (rune, used) = parse_escape(rest)?;
            items.push(Node::Rune(rune));
            self.pos += used;
            Ok(())
        }

        /// A bracketed class, Go's `parseClass` with Perl flags.
        fn parse_class(&mut self) -> Result<Node, RegexError> {
            let whole = self.rest();
            self.pos += 1;
            let negated = self.peek() == Some(b'^');
            if negated {
                self.pos += 1;
            }
            let mut ranges = Vec::new();
            let mut first = true;
            loop {
                let t = self.rest();
                if !first && t.starts_with(']') {
                    break;
                }
                first = false;
                if t.len() > 2 && t.starts_with("[:") {
                    if let Some(end) = t.get(2..).and_then(|s| s.find(":]")) {
                        let name = t.get(..end + 4).unwrap_or_default();
                        let Some((group_negated, group)) = posix_group(name) else {
                            return Err(RegexError::new("invalid character class range", name));
                        };
                        add_group(&mut ranges, group_negated, group);
                        self.pos += name.len();
                        continue;
                    }
                }
                if t.starts_with("\\p") || t.starts_with("\\P") {
                    return Err(unicode_class_error(t));
                }
                if let Some((group_negated, group)) = perl_group(t) {
                    add_group(&mut ranges, group_negated, group);
                    self.pos += 2;
                    continue;
                }
                let (lo, used) = class_char(t, whole)?;
                self.pos += used;
                let mut hi = lo;
                let t2 = self.rest();
                if t2.len() >= 2 && t2.starts_with('-') && t2.as_bytes().get(1) != Some(&b']') {
                    self.pos += 1;
                    let (end, used) = class_char(self.rest(), whole)?;
                    self.pos += used;
                    hi = end;
                    if hi < lo {
                        let used = t.len().saturating_sub(self.rest().len());
                        let text = t.get(..used).unwrap_or(t);
                        return Err(RegexError::new("invalid character class range", text));
                    }
                }
                ranges.push((lo, hi));
            }
            self.pos += 1; // the closing `]`
            let mut ranges = normalize(ranges);
            if negated {
                ranges = negate(&ranges);
            }
            Ok(class_node(ranges))
        }
    }

    fn repeat_depth(node: &Node) -> usize {
        let mut depth = 0;
        let mut node = node;
        while let Node::Repeat(inner, _) = node {
            depth += 1;
            node = inner;
        }
        depth
    }

    /// Go's `parseRepeat`: `{n}`, `{n,}` or `{n,m}` at the start of `s`, as
    /// (min, max, bytes used); `None` when `{` is a literal. Numbers of 10^8
    /// and more come back as `u32::MAX`, which the caller rejects.
    fn parse_count(s: &str) -> Option<(u32, Option<u32>, usize)> {
        let bytes = s.as_bytes();
        let number = |from: usize| -> Option<(u32, usize)> {
            let digits = bytes
                .get(from..)?
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            // At least one digit, and no leading zero.
            if digits == 0 || (digits > 1 && bytes.get(from) == Some(&b'0')) {
                return None;
            }
            let mut value: u32 = 0;
            for &digit in bytes.get(from..from + digits)? {
                if value >= 100_000_000 {
                    return Some((u32::MAX, from + digits));
                }
                value = value * 10 + u32::from(digit - b'0');
            }
            Some((value, from + digits))
        };
        if bytes.first() != Some(&b'{') {
            return None;
        }
        let (min, at) = number(1)?;
        let (max, at) = match bytes.get(at) {
            Some(b',') => match bytes.get(at + 1) {
                Some(b'}') => (None, at + 1),
                _ => {
                    let (max, at) = number(at + 1)?;
                    (Some(max), at)
                }
            },
            Some(_) => (Some(min), at),
            None => return None,
        };
        (bytes.get(at) == Some(&b'}')).then_some((min, max, at + 1))
    }

    /// Go's `repeatIsValid`: nested counts may not multiply past `limit`.
    fn repeat_is_valid(node: &Node, mut limit: u32) -> bool {
        if let Node::Repeat(_, Rep::Count { min, max }) = node {
            let most = match max {
                Some(0) => return true,
                Some(max) => *max,
                None => *min,
            };
            if most > limit {
                return false;
            }
            limit = limit.checked_div(most).unwrap_or(limit);
        }
        match node {
            Node::Concat(items) | Node::Alt(items) => {
                items.iter().all(|item| repeat_is_valid(item, limit))
            }
            Node::Repeat(inner, _) => repeat_is_valid(inner, limit),
            _ => true,
        }
    }

    fn unicode_class_error(rest: &str) -> RegexError {
        let end = rest
            .char_indices()
            .nth(2)
            .map_or(rest.len(), |(index, _)| index);
        RegexError::new(
            "Unicode classes are not supported",
            rest.get(..end).unwrap_or(rest),
        )
    }

    /// A character inside a class: plain or escaped.
    fn class_char(s: &str, whole: &str) -> Result<(u32, usize), RegexError> {
        match s.chars().next() {
            None => Err(RegexError::new("missing closing ]", whole)),
            Some('\\') => parse_escape(s),
            Some(ch) => Ok((u32::from(ch), ch.len_utf8())),
        }
    }

    /// Go's `parseEscape`: `s` starts with `\`; returns the character and the
    /// bytes used.
    fn parse_escape(s: &str) -> Result<(u32, usize), RegexError> {
        let bytes = s.as_bytes();
        let Some(c) = s.get(1..).and_then(|t| t.chars().next()) else {
            return Err(RegexError::new(
                "trailing backslash at end of expression",
                "",
            ));
        };
        let mut used = 1 + c.len_utf8();
        let invalid = |used: usize| {
            Err(RegexError::new(
                "invalid escape sequence",
                s.get(..used).unwrap_or(s),
            ))
        };
        let octal = |byte: Option<&u8>| byte.filter(|b| (b'0'..=b'7').contains(b)).copied();
        match c {
            '0'..='7' => {
                // `\1`–`\7` alone would be a backreference.
                if c != '0' && octal(bytes.get(used)).is_none() {
                    return invalid(used);
                }
                let mut rune = u32::from(c) - u32::from('0');
                for _ in 1..3 {
                    match octal(bytes.get(used)) {
                        Some(digit) => {
                            rune = rune * 8 + u32::from(digit - b'0');
                            used += 1;
                        }
                        None => break,
                    }
                }
                Ok((rune, used))
            }
            'x' => {
                let Some(c2) = s.get(used..).and_then(|t| t.chars().next()) else {
                    return invalid(used);
                };
                used += c2.len_utf8();
                if c2 == '{' {
                    let mut rune: u32 = 0;
                    let mut digits = 0;
                    loop {
                        let Some(c3) = s.get(used..).and_then(|t| t.chars().next()) else {
                            return invalid(used);
                        };
                        used += c3.len_utf8();
                        if c3 == '}' {
                            break;
                        }
                        let Some(value) = c3.to_digit(16) else {
                            return invalid(used);
                        };
                        rune = rune.saturating_mul(16).saturating_add(value);
                        if rune > MAX_RUNE {
                            return invalid(used);
                        }
                        digits += 1;
                    }
                    if digits == 0 {
                        return invalid(used);
                    }
                    return Ok((rune, used));
                }
                let c3 = s.get(used..).and_then(|t| t.chars().next());
                used += c3.map_or(0, char::len_utf8);
                match (c2.to_digit(16), c3.and_then(|c3| c3.to_digit(16))) {
                    (Some(x), Some(y)) => Ok((x * 16 + y, used)),
                    _ => invalid(used),
                }
            }
            'a' => Ok((7, used)),
            'f' => Ok((12, used)),
            'n' => Ok((10, used)),
            'r' => Ok((13, used)),
            't' => Ok((9, used)),
            'v' => Ok((11, used)),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok((u32::from(c), used)),
            _ => invalid(used),
        }
    }

    const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
    const PERL_SPACE: &[(u32, u32)] = &[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)];
    const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];

    /// `\d`, `\s`, `\w` and their negations (ASCII, as in Go).
    fn perl_group(s: &str) -> Option<(bool, &'static [(u32, u32)])> {
        Some(match s.as_bytes().get(..2)? {
            b"\\d" => (false, DIGIT),
            b"\\D" => (true, DIGIT),
            b"\\s" => (false, PERL_SPACE),
            b"\\S" => (true, PERL_SPACE),
            b"\\w" => (false, WORD),
            b"\\W" => (true, WORD),
            _ => return None,
        })
    }

    /// `[:alpha:]`, `[:^alpha:]` and the other POSIX classes (ASCII).
    fn posix_group(name: &str) -> Option<(bool, &'static [(u32, u32)])> {
        let inner = name.strip_prefix("[:")?.strip_suffix(":]")?;
        let (negated, inner) = match inner.strip_prefix('^') {
            Some(inner) => (true, inner),
            None => (false, inner),
        };
        let ranges: &'static [(u32, u32)] = match inner {
            "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
            "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
            "ascii" => &[(0x00, 0x7F)],
            "blank" => &[(0x09, 0x09), (0x20, 0x20)],
            "cntrl" => &[(0x00, 0x1F), (0x7F, 0x7F)],
            "digit" => DIGIT,
            "graph" => &[(0x21, 0x7E)],
            "lower" => &[(0x61, 0x7A)],
            "print" => &[(0x20, 0x7E)],
            "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
            "space" => &[(0x09, 0x0D), (0x20, 0x20)],
            "upper" => &[(0x41, 0x5A)],
            "word" => WORD,
            "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
            _ => return None,
        };
        Some((negated, ranges))
    }

    fn add_group(ranges: &mut Ranges, negated: bool, group: &[(u32, u32)]) {
        if negated {
            ranges.extend(negate(group));
        } else {
            ranges.extend_from_slice(group);
        }
    }

    /// A class of one character is that character.
    fn class_node(ranges: Ranges) -> Node {
        let ranges = normalize(ranges);
        match ranges.as_slice() {
            [(lo, hi)] if lo == hi => Node::Rune(*lo),
            _ => Node::Class(ranges),
        }
    }

    /// Sorted, with overlapping and adjacent ranges merged.
    fn normalize(mut ranges: Ranges) -> Ranges {
        ranges.sort_unstable();
        let mut out: Ranges = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out
    }

    /// Every character (up to U+10FFFF) not in the normalized `ranges`.
    fn negate(ranges: &[(u32, u32)]) -> Ranges {
        let mut out = Vec::with_capacity(ranges.len() + 1);
        let mut next = 0u32;
        for &(lo, hi) in ranges {
            if lo > next {
                out.push((next, lo - 1));
            }
            next = hi.saturating_add(1);
        }
        if next <= MAX_RUNE {
            out.push((next, MAX_RUNE));
        }
        out
    }
}
