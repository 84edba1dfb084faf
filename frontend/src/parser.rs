//! Dockerfile text into a list of [`Node`]s, one per instruction.
//!
//! This is the line-level layer: parser directives (`# escape=`, `# syntax=`,
//! `# check=`), comments, line continuations (including the comment and empty
//! lines Docker allows inside them), flag extraction, the JSON-or-shell form
//! decision and heredoc bodies. It follows BuildKit's parser rule for rule so
//! that `estiba debug parse` prints the same AST dump as BuildKit's own corpus
//! expects. Meaning (which flags an instruction takes, how many arguments) is
//! the business of [`crate::instructions`].

use crate::shell::Lexer;
use crate::span::Span;
use std::collections::BTreeMap;

/// The default escape character.
pub const DEFAULT_ESCAPE: char = '\\';

/// A parse failure with the lines it happened on.
#[derive(Debug)]
pub struct ParseError {
    /// Where the failing instruction or directive is.
    pub span: Span,
    /// What went wrong.
    pub kind: Box<ParseErrorKind>,
}

/// What made a Dockerfile unparseable.
#[derive(Debug, thiserror::Error)]
pub enum ParseErrorKind {
    /// `# escape=` with something other than `\` or `` ` ``.
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscape(String),
    /// The same directive twice.
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    /// A JSON array with something other than strings in it.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    /// `ENV key` with no value.
    #[error("{0} must have two arguments")]
    MissingValue(&'static str),
    /// `ENV a=b c` mixing forms.
    #[error("syntax error - can't find = in {0:?}. Must be of the form: name=value")]
    MissingEquals(String),
    /// A heredoc whose terminator never came.
    #[error("unterminated heredoc {0:?}")]
    UnterminatedHeredoc(String),
    /// A heredoc word the lexer could not read.
    #[error("invalid heredoc word {word:?}")]
    BadHeredoc {
        /// The word after `<<`.
        word: String,
        /// The lexer's complaint.
        #[source]
        source: crate::shell::ShellError,
    },
    /// Nothing but comments and blank lines.
    #[error("file with no instructions")]
    Empty,
}

/// A heredoc attached to an instruction (`RUN <<EOF`, `COPY <<EOF /dst`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor (`3<<EOF`), 0 when none was given.
    pub fd: u32,
    /// Whether variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines.
    pub chomp: bool,
    /// The body, every line with its newline, the terminator line excluded.
    pub content: String,
}

/// One parsed instruction, before its meaning is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction word as written (`from`, `COPY`, `Copppy`).
    pub cmd: String,
    /// Flags (`--from=build`), in order, before any argument.
    pub flags: Vec<String>,
    /// Arguments as BuildKit's AST has them: words, JSON elements, or for
    /// ENV/LABEL the triples key, value, separator (`=` or empty).
    pub args: Vec<String>,
    /// The instruction inside an ONBUILD.
    pub child: Option<Box<Node>>,
    /// Whether the arguments were a JSON array (exec form).
    pub json: bool,
    /// Heredoc bodies, in the order their delimiters appear on the line.
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuations joined, comments removed.
    pub original: String,
    /// Lines the instruction covers, heredoc bodies included.
    pub span: Span,
    /// The comment lines right above the instruction, `#` and surrounding
    /// space removed (BuildKit's `PrevComment`: an empty `#` line starts the
    /// block again, parser directives are not part of it). Read for
    /// per-instruction `# check=` comments and stage/ARG descriptions.
    pub comments: Vec<String>,
}

impl Node {
    /// The instruction name in lower case.
    pub fn name(&self) -> String {
        self.cmd.to_ascii_lowercase()
    }

    /// The AST dump of this node in BuildKit's format (`(copy ["--from=a"] "x" "/")`).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        self.dump_into(&mut out);
        out
    }

    fn dump_into(&self, out: &mut String) {
        out.push_str(&self.cmd.to_lowercase());
        if !self.flags.is_empty() {
            out.push_str(" [");
            for (i, flag) in self.flags.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_quote_into(flag, out);
            }
            out.push(']');
        }
        if let Some(child) = &self.child {
            out.push_str(" (");
            child.dump_into(out);
            out.push(')');
        }
        for arg in &self.args {
            out.push(' ');
            go_quote_into(arg, out);
        }
    }
}

/// The result of parsing a whole Dockerfile.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Instructions in file order.
    pub nodes: Vec<Node>,
    /// The escape character in force (`\` unless `# escape=` said otherwise).
    pub escape: char,
    /// Parser directives found at the top (`syntax`, `escape`, `check`), lower-cased keys.
    pub directives: BTreeMap<String, String>,
    /// Non-fatal findings, such as empty continuation lines.
    pub warnings: Vec<Warning>,
}

impl Parsed {
    /// The whole AST dump, one line per instruction, as BuildKit's `result` files.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push('(');
            node.dump_into(&mut out);
            out.push_str(")\n");
        }
        out
    }
}

/// A problem worth telling the user that does not stop the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where it was found.
    pub span: Span,
    /// What it is.
    pub message: String,
}

/// The state of directive parsing: directives are only read before the first
/// line that is not one.
struct Directives {
    escape: char,
    done: bool,
    seen: BTreeMap<String, String>,
}

impl Directives {
    /// Looks at a line for a parser directive; true when it was one.
    fn check_line(&mut self, line: &str) -> Result<bool, ParseErrorKind> {
        if self.done {
            return Ok(false);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(false);
        };
        let Some((key, value)) = split_directive(rest.trim_start()) else {
            self.done = true;
            return Ok(false);
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(false);
        }
        if self.seen.contains_key(&key) {
            return Err(ParseErrorKind::DuplicateDirective(key));
        }
        if key == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => return Err(ParseErrorKind::InvalidEscape(other.to_string())),
            };
        }
        self.seen.insert(key, value.to_string());
        Ok(true)
    }
}

/// `key = value` with key `[a-zA-Z][a-zA-Z0-9]*` and a non-empty value,
/// surrounding ASCII whitespace ignored.
pub(crate) fn split_directive(text: &str) -> Option<(&str, &str)> {
    let key_len = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(text.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let rest = text[key_len..].trim_start_matches(is_re_space);
    let value = rest.strip_prefix('=')?.trim_matches(is_re_space);
    if value.is_empty() {
        return None;
    }
    Some((&text[..key_len], value))
}

/// RE2's `\s`: ASCII whitespace without `\v`.
fn is_re_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

/// BuildKit's `[\t\v\f\r ]`, the separator of whitespace-delimited arguments.
fn is_word_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// Removes a trailing line-continuation escape; returns the line and whether
/// the logical line ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape) {
        if before.is_empty() || !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

/// Parses a whole Dockerfile. `file` names it in spans and errors.
pub fn parse(file: &str, text: &str) -> Result<Parsed, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut directives = Directives {
        escape: DEFAULT_ESCAPE,
        done: false,
        seen: BTreeMap::new(),
    };
    let mut lines = text.split_inclusive('\n');
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut current = 0usize;
    let mut comments: Vec<String> = Vec::new();
    let error = |kind, start: usize, end: usize| ParseError {
        span: Span::lines(file, start.max(1), end.max(1)),
        kind: Box::new(kind),
    };

    while let Some(raw) = lines.next() {
        let stripped = trim_newline(raw).trim_start();
        let directive = directives
            .check_line(stripped)
            .map_err(|kind| error(kind, current + 1, current + 1))?;
        if let (Some(comment), false) = (stripped.strip_prefix('#'), directive) {
            match comment.trim() {
                "" => comments.clear(),
                text => comments.push(text.to_string()),
            }
        }
        current += 1;
        let start = current;
        let column = trim_newline(raw).len() - stripped.len() + 1;
        let first = if is_comment(stripped) { "" } else { stripped };
        let (first, mut end_of_line) = trim_continuation(first, directives.escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut logical = String::from(first);
        let mut empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            let line = trim_newline(raw);
            directives
                .check_line(line)
                .map_err(|kind| error(kind, current + 1, current + 1))?;
            current += 1;
            if is_comment(line) {
                continue;
            }
            if line.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (line, eol) = trim_continuation(line, directives.escape);
            end_of_line = eol;
            logical.push_str(line);
        }
        if empty_continuation {
            warnings.push(Warning {
                span: Span::lines(file, start, current),
                message: format!("empty continuation line found in: {logical}"),
            });
        }

        let mut node = node_from_line(&logical, directives.escape)
            .map_err(|kind| error(kind, start, current))?;
        if node.can_contain_heredoc() && logical.contains("<<") {
            let found = heredocs_in_line(&logical).map_err(|kind| error(kind, start, current))?;
            for mut heredoc in found {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(error(
                        ParseErrorKind::UnterminatedHeredoc(heredoc.name),
                        start,
                        current,
                    ));
                }
                node.attach_heredoc(heredoc);
            }
        }
        node.set_span(Span::lines(file, start, current).at_column(column));
        node.comments = std::mem::take(&mut comments);
        nodes.push(node);
    }

    if nodes.is_empty() {
        return Err(error(ParseErrorKind::Empty, current, current));
    }
    Ok(Parsed {
        nodes,
        escape: directives.escape,
        directives: directives.seen,
        warnings,
    })
}

impl Node {
    fn can_contain_heredoc(&self) -> bool {
        let node = match &self.child {
            Some(child) if self.name() == "onbuild" => child,
            _ => self,
        };
        matches!(node.name().as_str(), "add" | "copy" | "run") && !node.json
    }

    /// Heredoc bodies belong to the instruction that names them: the ONBUILD
    /// trigger, not the ONBUILD itself.
    fn attach_heredoc(&mut self, heredoc: Heredoc) {
        if let Some(child) = &mut self.child {
            child.heredocs.push(heredoc.clone());
        }
        self.heredocs.push(heredoc);
    }

    fn set_span(&mut self, span: Span) {
        if let Some(child) = &mut self.child {
            child.set_span(span.clone());
        }
        self.span = span;
    }
}

/// Splits a logical line into instruction, flags and arguments, and reads the
/// arguments the way that instruction's parser does.
fn node_from_line(line: &str, escape: char) -> Result<Node, ParseErrorKind> {
    let trimmed = line.trim();
    let (cmd, rest) = match trimmed.find(is_word_space) {
        Some(at) => (
            &trimmed[..at],
            trimmed[at..].trim_start_matches(is_word_space),
        ),
        None => (trimmed, ""),
    };
    let (rest, flags) = extract_flags(rest, escape);
    let rest = rest.trim();
    let mut node = Node {
        cmd: cmd.to_string(),
        flags,
        args: Vec::new(),
        child: None,
        json: false,
        heredocs: Vec::new(),
        original: line.to_string(),
        span: Span::lines("", 0, 0),
        comments: Vec::new(),
    };
    match node.name().as_str() {
        "add" | "copy" | "volume" => match parse_json(rest)? {
            Some(args) => (node.args, node.json) = (args, true),
            None => node.args = split_whitespace(rest),
        },
        "cmd" | "entrypoint" | "run" | "shell" => {
            (node.args, node.json) = parse_maybe_json(rest)?;
        }
        "arg" => node.args = parse_words(rest, escape),
        "env" => node.args = parse_name_value(rest, "ENV", escape)?,
        "label" => node.args = parse_name_value(rest, "LABEL", escape)?,
        "expose" | "from" => node.args = split_whitespace(rest),
        "healthcheck" => (node.args, node.json) = parse_health(rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" if !rest.is_empty() => {
            node.args = vec![rest.to_string()];
        }
        "onbuild" if !rest.is_empty() => {
            node.child = Some(Box::new(node_from_line(rest, escape)?));
        }
        "maintainer" | "stopsignal" | "user" | "workdir" | "onbuild" => {}
        // Unknown instructions parse (BuildKit keeps an empty argument) and
        // are rejected with a suggestion when their meaning is read.
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// Reads leading `--flag[=value]` words; `--` ends them. Returns the rest of
/// the line and the flags with quotes and escapes removed.
fn extract_flags(line: &str, escape: char) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return ("", flags);
        };
        if !line[start..].starts_with("--") {
            return (&line[start..], flags);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut ended_at = None;
        while let Some((at, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    ended_at = Some(at);
                    break;
                }
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == escape => match chars.next() {
                    Some((_, next)) => word.push(next),
                    None => quote = None,
                },
                _ => word.push(c),
            }
        }
        match ended_at {
            Some(at) if word == "--" => return (&line[at..], flags),
            Some(_) => {
                if blank_ok || !word.is_empty() {
                    flags.push(word);
                }
            }
            None => {
                if word != "--" && (blank_ok || !word.is_empty()) {
                    flags.push(word);
                }
                return ("", flags);
            }
        }
    }
}

/// Whitespace-delimited words, nothing else interpreted.
fn split_whitespace(rest: &str) -> Vec<String> {
    rest.split(is_word_space)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// A JSON array of strings, or `None` when `rest` is not a JSON array at all.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, ParseErrorKind> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(ParseErrorKind::NotStringArray),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Exec form when the arguments are a JSON array of strings, else the whole
/// rest of the line as one shell-form argument.
fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match parse_json(rest)? {
        Some(args) => (args, true),
        None => (vec![rest.to_string()], false),
    })
}

/// `HEALTHCHECK TYPE [cmd]`: the type word, then CMD-like arguments.
fn parse_health(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    let sep = rest
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let (kind, cmd) = rest.split_at(sep);
    let (cmd_args, json) =
        parse_maybe_json(cmd.trim_start_matches(|c: char| c.is_ascii_whitespace()))?;
    let mut args = vec![kind.to_string()];
    args.extend(cmd_args);
    Ok((args, json))
}

/// Words separated by whitespace, quotes and escapes kept verbatim (they are
/// removed later, by expansion).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut in_word = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if !in_word {
            if c.is_whitespace() {
                continue;
            }
            in_word = true;
        }
        match quote {
            None if c.is_whitespace() => {
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                in_word = false;
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                    word.push(c);
                } else if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(c);
                        word.push(next);
                    }
                } else {
                    word.push(c);
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                    word.push(c);
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        Some(next) => {
                            word.push(c);
                            word.push(next);
                        }
                        None => quote = None,
                    }
                } else {
                    word.push(c);
                }
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// ENV and LABEL: `key value` (legacy, one pair) or `k=v k2=v2 ...`,
/// flattened into (key, value, separator) triples.
fn parse_name_value(
    rest: &str,
    what: &'static str,
    escape: char,
) -> Result<Vec<String>, ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let Some(at) = rest.find(is_word_space) else {
            return Err(ParseErrorKind::MissingValue(what));
        };
        let value = rest[at..].trim_start_matches(is_word_space);
        return Ok(vec![
            rest[..at].to_string(),
            value.to_string(),
            String::new(),
        ]);
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals(word));
        };
        args.extend([key.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(args)
}

/// The heredocs a logical line opens, in order.
fn heredocs_in_line(line: &str) -> Result<Vec<Heredoc>, ParseErrorKind> {
    let lexer = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    let words = lexer.expand_words(line, &no_env()).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Reads one word as a heredoc opener (`<<EOF`, `<<-"EOF"`, `3<<EOF`), or
/// `None` when it is not one. The body is left empty.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, ParseErrorKind> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(after) => (true, after),
        None => (false, after),
    };
    let rest = after.trim_start_matches(is_re_space);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let fd = word[..digits].parse::<u32>().unwrap_or(0);
    let bad = |source| ParseErrorKind::BadHeredoc {
        word: rest.to_string(),
        source,
    };
    let lexer = Lexer::new('\\').skip_unset_env(true);
    let words = lexer.expand_words(rest, &no_env()).map_err(bad)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = lexer
        .clone()
        .raw_quotes(true)
        .expand_words(rest, &no_env())
        .map_err(bad)?;
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = raw.len() == 1 && quotes(name) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: name.clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// Removes leading tabs from every line of a `<<-` heredoc body.
pub fn chomp_heredoc(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// Names of every instruction, for suggestions.
pub const INSTRUCTIONS: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Appends `s` quoted as Go's `strconv.Quote` would.
fn go_quote_into(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// Go's `unicode.IsPrint`, closely enough for Dockerfiles: no controls, no
/// spaces but ASCII space, no format characters, no private use.
fn go_printable(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(u,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f
        | 0x202a..=0x202e | 0x2060..=0x206f | 0xd800..=0xdfff | 0xe000..=0xf8ff
        | 0xfeff | 0xfff9..=0xfffb | 0xfffe | 0xffff | 0xf0000..)
}

crate::span::spanned_error!(ParseError);
