//! Parsed [`Node`]s into typed [`Instruction`]s.
//!
//! One `parse_*` function per instruction reads its flags and checks its
//! arguments, with BuildKit's rules (`instructions/parse.go`): which flags each
//! instruction takes, how many arguments, what a heredoc may stand for.
//! Variables are not expanded here; that needs the build's ARG and ENV state
//! and happens in [`crate::plan`](mod@crate::plan).

use crate::parser::{self, Heredoc, Node, ParseError};
use crate::span::Span;
use crate::suggest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An instruction that is not what its instruction allows.
#[derive(Debug)]
pub struct InstructionError {
    /// The instruction's lines.
    pub span: Span,
    /// What is wrong with it.
    pub kind: Box<InstructionErrorKind>,
}

/// What is wrong with an instruction.
#[derive(Debug, thiserror::Error)]
pub enum InstructionErrorKind {
    /// Not one of the 18 instructions.
    #[error("unknown instruction: {name}{}", did_you_mean(.suggestion))]
    UnknownInstruction {
        /// As written.
        name: String,
        /// The nearest instruction, upper case.
        suggestion: Option<String>,
    },
    /// A flag this instruction does not take.
    #[error("unknown flag: --{flag} for {instruction}{}", did_you_mean(.suggestion))]
    UnknownFlag {
        /// The flag name without dashes.
        flag: String,
        /// The instruction, upper case.
        instruction: String,
        /// The nearest flag of that instruction, with dashes.
        suggestion: Option<String>,
    },
    /// An argument where a flag was expected.
    #[error("flag should start with --: {0}")]
    NotAFlag(String),
    /// A single-valued flag given twice.
    #[error("duplicate flag specified: --{0}")]
    DuplicateFlag(String),
    /// `--from` with no `=value`.
    #[error("missing a value on flag: --{0}")]
    MissingFlagValue(String),
    /// A boolean flag with a value other than true or false.
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    NotABool {
        /// The flag.
        flag: String,
        /// What it was given.
        value: String,
    },
    /// A flag value outside the allowed set.
    #[error("invalid value {value:?} for --{flag}, expected one of: {expected}")]
    BadFlagValue {
        /// The flag.
        flag: String,
        /// What it was given.
        value: String,
        /// The allowed values.
        expected: &'static str,
    },
    /// No arguments.
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(&'static str),
    /// Not exactly one argument.
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(&'static str),
    /// COPY or ADD with a single argument.
    #[error("{0} requires at least two arguments, but only one was provided; the destination could not be determined")]
    NoDestination(&'static str),
    /// `COPY x <<EOF`.
    #[error("{0} cannot accept a heredoc as a destination")]
    HeredocDestination(&'static str),
    /// `ENV =x` or `ARG =x`.
    #[error("{0} names can not be blank")]
    BlankName(&'static str),
    /// `FROM a b`.
    #[error("FROM requires either one or three arguments (FROM image [AS name])")]
    FromArguments,
    /// `FROM x AS 1st`.
    #[error(
        "invalid name for build stage: {0:?}, name can't start with a number or contain symbols"
    )]
    BadStageName(String),
    /// `ONBUILD ONBUILD`.
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    /// `ONBUILD FROM`, `ONBUILD MAINTAINER`.
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    /// `HEALTHCHECK NONE x`.
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArgs,
    /// `HEALTHCHECK CMD` alone.
    #[error("missing command after HEALTHCHECK CMD")]
    HealthcheckNoCommand,
    /// `HEALTHCHECK PING`.
    #[error("unknown type {0:?} in HEALTHCHECK (try CMD)")]
    HealthcheckType(String),
    /// `--interval=5` (no unit).
    #[error(
        "invalid duration {value:?} for --{flag}: use a number with a unit (300ms, 5s, 1m30s)"
    )]
    BadDuration {
        /// The flag.
        flag: String,
        /// The value.
        value: String,
    },
    /// `--interval=1us`.
    #[error("--{0} cannot be less than 1ms")]
    DurationTooShort(String),
    /// `--retries=x` or negative.
    #[error("invalid value {0:?} for --retries: expected a whole number, 0 or more")]
    BadRetries(String),
    /// `VOLUME ""`.
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    /// `SHELL /bin/sh -c`.
    #[error("SHELL requires the arguments to be in JSON form, like SHELL [\"/bin/sh\", \"-c\"]")]
    ShellNotJson,
    /// A bad `--mount` value.
    #[error("invalid --mount {value:?}: {reason}")]
    BadMount {
        /// The whole flag value.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

fn did_you_mean(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

/// A typed instruction with the lines it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    /// Where it is.
    pub span: Span,
    /// The logical line as written, continuations joined.
    pub original: String,
    /// What it says.
    pub kind: Kind,
}

/// Each instruction and what it carries, before expansion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "instruction", rename_all = "UPPERCASE")]
pub enum Kind {
    /// `FROM [--platform=p] image [AS name]`.
    From(From),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `RUN [--mount ...] [--network ...] [--security ...] command`.
    Run(Run),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `SHELL ["exe", "-c"]`.
    Shell(Vec<String>),
    /// `LABEL k=v ...`.
    Label(Vec<KeyValue>),
    /// `MAINTAINER name`.
    Maintainer(String),
    /// `EXPOSE 80/tcp ...`.
    Expose(Vec<String>),
    /// `ENV k=v ...`.
    Env(Vec<KeyValue>),
    /// `ADD`.
    Add(Add),
    /// `COPY`.
    Copy(Copy),
    /// `VOLUME /a /b`.
    Volume(Vec<String>),
    /// `USER name[:group]`.
    User(String),
    /// `WORKDIR /path`.
    Workdir(String),
    /// `ONBUILD <instruction>`: the trigger's text, heredocs included.
    Onbuild(String),
    /// `STOPSIGNAL SIGTERM`.
    Stopsignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
}

/// `FROM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct From {
    /// The image or stage, unexpanded.
    pub base: String,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// `--platform`.
    pub platform: Option<String>,
}

/// One name of an `ARG`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDecl {
    /// The name.
    pub key: String,
    /// The default, if any.
    pub value: Option<String>,
}

/// A key and value of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value, quotes still in place until expansion.
    pub value: String,
}

/// The command of RUN, CMD or ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLine {
    /// Exec form: the argv. Shell form: one element, the command text.
    pub args: Vec<String>,
    /// Shell form: the command runs through the stage's SHELL.
    pub shell_form: bool,
    /// Heredoc files (`RUN <<EOF`).
    pub files: Vec<InlineFile>,
}

/// A heredoc body given to a RUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    /// The delimiter.
    pub name: String,
    /// The body.
    pub data: String,
    /// `<<-`: strip leading tabs.
    pub chomp: bool,
    /// Variables in the body are expanded by the shell (unquoted delimiter).
    pub expand: bool,
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// What to run.
    pub command: CommandLine,
    /// `--mount` values as written, parsed once expanded.
    pub mounts: Vec<String>,
    /// `--network=default|none|host`.
    pub network: Option<String>,
    /// `--security=sandbox|insecure`.
    pub security: Option<String>,
}

/// Sources and destination of COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Files {
    /// Source paths (or URLs for ADD), unexpanded.
    pub sources: Vec<String>,
    /// Heredoc sources that become files.
    pub contents: Vec<SourceContent>,
    /// The destination.
    pub dest: String,
}

/// A heredoc used as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceContent {
    /// The file name (the heredoc delimiter).
    pub path: String,
    /// The body (tabs already chomped for `<<-`).
    pub data: String,
    /// Expand variables in the body.
    pub expand: bool,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// What and where.
    pub files: Files,
    /// `--from`: a stage name, index or image.
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Add {
    /// What and where.
    pub files: Files,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`.
    pub keep_git_dir: Option<bool>,
    /// `--checksum`.
    pub checksum: Option<String>,
    /// `--unpack`.
    pub unpack: Option<bool>,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
}

/// `HEALTHCHECK`, as the image config stores it (docker's field names;
/// zero durations are left out, as docker leaves them out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", argv...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// `--interval` in nanoseconds, 0 when not set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// `--timeout` in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// `--start-period` in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    /// `--start-interval` in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    /// `--retries`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Parses every node of a Dockerfile.
pub fn parse_all(parsed: &parser::Parsed) -> Result<Vec<Instruction>, InstructionError> {
    parsed.nodes.iter().map(parse_instruction).collect()
}

/// Parses text (a whole Dockerfile, or an ONBUILD trigger) straight to
/// instructions.
pub fn parse_text(file: &str, text: &str) -> Result<Vec<Instruction>, crate::Error> {
    let parsed = parser::parse(file, text).map_err(|e: ParseError| crate::Error::from(e))?;
    Ok(parse_all(&parsed)?)
}

/// Gives one node its meaning.
pub fn parse_instruction(node: &Node) -> Result<Instruction, InstructionError> {
    let err = |kind| InstructionError {
        span: node.span.clone(),
        kind: Box::new(kind),
    };
    let kind = match node.name().as_str() {
        "from" => parse_from(node),
        "arg" => parse_arg(node),
        "run" => parse_run(node),
        "cmd" => parse_cmd(node).map(Kind::Cmd),
        "entrypoint" => parse_entrypoint(node),
        "shell" => parse_shell(node),
        "label" => parse_label(node),
        "maintainer" => parse_maintainer(node),
        "expose" => parse_expose(node),
        "env" => parse_env(node),
        "add" => parse_add(node),
        "copy" => parse_copy(node),
        "volume" => parse_volume(node),
        "user" => parse_user(node),
        "workdir" => parse_workdir(node),
        "onbuild" => parse_onbuild(node),
        "stopsignal" => parse_stopsignal(node),
        "healthcheck" => parse_healthcheck(node),
        _ => Err(InstructionErrorKind::UnknownInstruction {
            name: node.cmd.clone(),
            suggestion: suggest::nearest(&node.cmd, parser::INSTRUCTIONS)
                .map(str::to_ascii_uppercase),
        }),
    }
    .map_err(err)?;
    Ok(Instruction {
        span: node.span.clone(),
        original: node.original.clone(),
        kind,
    })
}

type Result2<T> = Result<T, InstructionErrorKind>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagType {
    Bool,
    String,
    Strings,
}

/// Flag values once read: single values by name, repeated ones in order.
#[derive(Default)]
struct Flags {
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last().cloned())
    }
    fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }
}

/// Reads `node.flags` against the flags `instruction` takes.
fn parse_flags(
    node: &Node,
    instruction: &str,
    spec: &[(&'static str, FlagType)],
) -> Result2<Flags> {
    let mut flags = Flags::default();
    for arg in &node.flags {
        if arg == "--" {
            break;
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(InstructionErrorKind::NotAFlag(arg.clone()));
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let Some(&(key, ty)) = spec.iter().find(|(n, _)| *n == name) else {
            return Err(InstructionErrorKind::UnknownFlag {
                flag: name.to_string(),
                instruction: instruction.to_string(),
                suggestion: suggest::nearest(name, spec.iter().map(|(n, _)| *n))
                    .map(|s| format!("--{s}")),
            });
        };
        let entry = flags.values.entry(key).or_default();
        if ty != FlagType::Strings && !entry.is_empty() {
            return Err(InstructionErrorKind::DuplicateFlag(name.to_string()));
        }
        let value = match (ty, value) {
            (FlagType::Bool, None) => "true".to_string(),
            (FlagType::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" => "true".to_string(),
                "false" => "false".to_string(),
                "" => return Err(InstructionErrorKind::MissingFlagValue(name.to_string())),
                _ => {
                    return Err(InstructionErrorKind::NotABool {
                        flag: name.to_string(),
                        value: v.to_string(),
                    })
                }
            },
            (_, None) => return Err(InstructionErrorKind::MissingFlagValue(name.to_string())),
            (_, Some(v)) => v.to_string(),
        };
        entry.push(value);
    }
    Ok(flags)
}

fn no_flags(node: &Node, instruction: &str) -> Result2<()> {
    parse_flags(node, instruction, &[]).map(|_| ())
}

/// Exec form args as they are; shell form joined into one string.
fn command_args(node: &Node) -> Vec<String> {
    if node.json || node.args.is_empty() {
        node.args.clone()
    } else {
        vec![node.args.join(" ")]
    }
}

fn command_line(node: &Node) -> CommandLine {
    CommandLine {
        args: command_args(node),
        shell_form: !node.json,
        files: node
            .heredocs
            .iter()
            .map(|h: &Heredoc| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
                expand: h.expand,
            })
            .collect(),
    }
}

fn key_values(node: &Node, what: &'static str) -> Result2<Vec<KeyValue>> {
    if node.args.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument(what));
    }
    node.args
        .chunks(3)
        .map(|kv| match kv {
            [key, _, _] if key.is_empty() => Err(InstructionErrorKind::BlankName(what)),
            [key, value, _] => Ok(KeyValue {
                key: key.clone(),
                value: value.clone(),
            }),
            _ => Err(InstructionErrorKind::AtLeastOneArgument(what)),
        })
        .collect()
}

fn exactly_one(node: &Node, what: &'static str) -> Result2<String> {
    match node.args.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(InstructionErrorKind::ExactlyOneArgument(what)),
    }
}

fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_from(node: &Node) -> Result2<Kind> {
    let flags = parse_flags(node, "FROM", &[("platform", FlagType::String)])?;
    let name = match node.args.as_slice() {
        [_] => None,
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            if !is_valid_stage_name(&lower) {
                return Err(InstructionErrorKind::BadStageName(name.clone()));
            }
            Some(lower)
        }
        _ => return Err(InstructionErrorKind::FromArguments),
    };
    Ok(Kind::From(From {
        base: node.args[0].clone(),
        name,
        platform: flags.string("platform"),
    }))
}

fn parse_arg(node: &Node) -> Result2<Kind> {
    no_flags(node, "ARG")?;
    if node.args.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument("ARG"));
    }
    node.args
        .iter()
        .map(|arg| match arg.split_once('=') {
            Some(("", _)) => Err(InstructionErrorKind::BlankName("ARG")),
            Some((key, value)) => Ok(ArgDecl {
                key: key.to_string(),
                value: Some(value.to_string()),
            }),
            None => Ok(ArgDecl {
                key: arg.clone(),
                value: None,
            }),
        })
        .collect::<Result2<Vec<_>>>()
        .map(Kind::Arg)
}

fn parse_run(node: &Node) -> Result2<Kind> {
    let flags = parse_flags(
        node,
        "RUN",
        &[
            ("mount", FlagType::Strings),
            ("network", FlagType::String),
            ("security", FlagType::String),
        ],
    )?;
    let network = flags.string("network");
    check_choice(
        "network",
        network.as_deref(),
        &["default", "none", "host"],
        "default, none, host",
    )?;
    let security = flags.string("security");
    check_choice(
        "security",
        security.as_deref(),
        &["sandbox", "insecure"],
        "sandbox, insecure",
    )?;
    let mounts = flags.strings("mount");
    for mount in &mounts {
        check_mount_from(mount)?;
    }
    Ok(Kind::Run(Run {
        command: command_line(node),
        mounts,
        network,
        security,
    }))
}

fn check_choice(
    flag: &str,
    value: Option<&str>,
    allowed: &[&str],
    expected: &'static str,
) -> Result2<()> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(InstructionErrorKind::BadFlagValue {
            flag: flag.to_string(),
            value: v.to_string(),
            expected,
        }),
        _ => Ok(()),
    }
}

/// `from=` of a mount names a stage or image and is never expanded.
fn check_mount_from(value: &str) -> Result2<()> {
    for field in value.split(',') {
        if let Some((key, v)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("from") && v.find('$').is_some_and(|i| i + 1 != v.len()) {
                return Err(InstructionErrorKind::BadMount {
                    value: value.to_string(),
                    reason:
                        "'from' doesn't support variable expansion, define an alias stage instead"
                            .to_string(),
                });
            }
        }
    }
    Ok(())
}

fn parse_cmd(node: &Node) -> Result2<CommandLine> {
    no_flags(node, "CMD")?;
    Ok(command_line(node))
}

fn parse_entrypoint(node: &Node) -> Result2<Kind> {
    no_flags(node, "ENTRYPOINT")?;
    Ok(Kind::Entrypoint(command_line(node)))
}

fn parse_shell(node: &Node) -> Result2<Kind> {
    no_flags(node, "SHELL")?;
    if node.args.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument("SHELL"));
    }
    if !node.json {
        return Err(InstructionErrorKind::ShellNotJson);
    }
    Ok(Kind::Shell(node.args.clone()))
}

fn parse_label(node: &Node) -> Result2<Kind> {
    no_flags(node, "LABEL")?;
    key_values(node, "LABEL").map(Kind::Label)
}

fn parse_env(node: &Node) -> Result2<Kind> {
    no_flags(node, "ENV")?;
    key_values(node, "ENV").map(Kind::Env)
}

fn parse_maintainer(node: &Node) -> Result2<Kind> {
    no_flags(node, "MAINTAINER")?;
    exactly_one(node, "MAINTAINER").map(Kind::Maintainer)
}

fn parse_expose(node: &Node) -> Result2<Kind> {
    no_flags(node, "EXPOSE")?;
    if node.args.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument("EXPOSE"));
    }
    let mut ports = node.args.clone();
    ports.sort();
    Ok(Kind::Expose(ports))
}

fn files(node: &Node, what: &'static str) -> Result2<Files> {
    let Some((dest, sources)) = node.args.split_last() else {
        return Err(InstructionErrorKind::NoDestination(what));
    };
    if sources.is_empty() {
        return Err(InstructionErrorKind::NoDestination(what));
    }
    if parser::parse_heredoc(dest).ok().flatten().is_some() {
        return Err(InstructionErrorKind::HeredocDestination(what));
    }
    let mut files = Files {
        sources: Vec::new(),
        contents: Vec::new(),
        dest: dest.clone(),
    };
    for source in sources {
        match parser::parse_heredoc(source).ok().flatten() {
            Some(doc) if !node.json => {
                let body = node
                    .heredocs
                    .iter()
                    .find(|h| h.name == doc.name)
                    .map(|h| h.content.as_str())
                    .unwrap_or_default();
                files.contents.push(SourceContent {
                    path: doc.name,
                    data: if doc.chomp {
                        parser::chomp_heredoc(body)
                    } else {
                        body.to_string()
                    },
                    expand: doc.expand,
                });
            }
            _ => files.sources.push(source.clone()),
        }
    }
    Ok(files)
}

fn parse_add(node: &Node) -> Result2<Kind> {
    if node.args.len() < 2 {
        return Err(InstructionErrorKind::NoDestination("ADD"));
    }
    let flags = parse_flags(
        node,
        "ADD",
        &[
            ("chown", FlagType::String),
            ("chmod", FlagType::String),
            ("link", FlagType::Bool),
            ("keep-git-dir", FlagType::Bool),
            ("checksum", FlagType::String),
            ("unpack", FlagType::Bool),
            ("exclude", FlagType::Strings),
        ],
    )?;
    Ok(Kind::Add(Add {
        files: files(node, "ADD")?,
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        keep_git_dir: flags.bool("keep-git-dir"),
        checksum: flags.string("checksum"),
        unpack: flags.bool("unpack"),
        excludes: flags.strings("exclude"),
    }))
}

fn parse_copy(node: &Node) -> Result2<Kind> {
    if node.args.len() < 2 {
        return Err(InstructionErrorKind::NoDestination("COPY"));
    }
    let flags = parse_flags(
        node,
        "COPY",
        &[
            ("chown", FlagType::String),
            ("from", FlagType::String),
            ("chmod", FlagType::String),
            ("link", FlagType::Bool),
            ("exclude", FlagType::Strings),
            ("parents", FlagType::Bool),
        ],
    )?;
    Ok(Kind::Copy(Copy {
        files: files(node, "COPY")?,
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        excludes: flags.strings("exclude"),
    }))
}

fn parse_volume(node: &Node) -> Result2<Kind> {
    no_flags(node, "VOLUME")?;
    if node.args.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument("VOLUME"));
    }
    node.args
        .iter()
        .map(|v| match v.trim() {
            "" => Err(InstructionErrorKind::EmptyVolume),
            v => Ok(v.to_string()),
        })
        .collect::<Result2<Vec<_>>>()
        .map(Kind::Volume)
}

fn parse_user(node: &Node) -> Result2<Kind> {
    no_flags(node, "USER")?;
    exactly_one(node, "USER").map(Kind::User)
}

fn parse_workdir(node: &Node) -> Result2<Kind> {
    no_flags(node, "WORKDIR")?;
    exactly_one(node, "WORKDIR").map(Kind::Workdir)
}

fn parse_stopsignal(node: &Node) -> Result2<Kind> {
    no_flags(node, "STOPSIGNAL")?;
    exactly_one(node, "STOPSIGNAL").map(Kind::Stopsignal)
}

fn parse_onbuild(node: &Node) -> Result2<Kind> {
    no_flags(node, "ONBUILD")?;
    let Some(child) = &node.child else {
        return Err(InstructionErrorKind::AtLeastOneArgument("ONBUILD"));
    };
    let trigger = child.cmd.to_ascii_uppercase();
    match trigger.as_str() {
        "ONBUILD" => return Err(InstructionErrorKind::OnbuildChain),
        "MAINTAINER" | "FROM" => return Err(InstructionErrorKind::OnbuildTrigger(trigger)),
        _ => {}
    }
    // The trigger must itself be valid, so the error shows here and not in
    // some later build that uses this image as its base.
    parse_instruction(child).map_err(|e| *e.kind)?;
    let trimmed = node.original.trim_start();
    let mut expression = trimmed
        .get(7..)
        .filter(|_| trimmed[..7].eq_ignore_ascii_case("onbuild"))
        .unwrap_or(trimmed)
        .trim_start()
        .to_string();
    for doc in &node.heredocs {
        expression.push('\n');
        expression.push_str(&doc.content);
        expression.push_str(&doc.name);
    }
    Ok(Kind::Onbuild(expression))
}

fn parse_healthcheck(node: &Node) -> Result2<Kind> {
    let Some(kind) = node.args.first() else {
        return Err(InstructionErrorKind::AtLeastOneArgument("HEALTHCHECK"));
    };
    let kind = kind.to_ascii_uppercase();
    let args = &node.args[1..];
    if kind == "NONE" {
        no_flags(node, "HEALTHCHECK NONE")?;
        if !args.is_empty() {
            return Err(InstructionErrorKind::HealthcheckNoneArgs);
        }
        return Ok(Kind::Healthcheck(Healthcheck {
            test: vec![kind],
            interval: 0,
            timeout: 0,
            start_period: 0,
            start_interval: 0,
            retries: 0,
        }));
    }
    let flags = parse_flags(
        node,
        "HEALTHCHECK",
        &[
            ("interval", FlagType::String),
            ("timeout", FlagType::String),
            ("start-period", FlagType::String),
            ("start-interval", FlagType::String),
            ("retries", FlagType::String),
        ],
    )?;
    if kind != "CMD" {
        return Err(InstructionErrorKind::HealthcheckType(kind));
    }
    let command = if node.json || args.is_empty() {
        args.to_vec()
    } else {
        vec![args.join(" ")]
    };
    if command.is_empty() {
        return Err(InstructionErrorKind::HealthcheckNoCommand);
    }
    let mut test = vec![if node.json { "CMD" } else { "CMD-SHELL" }.to_string()];
    test.extend(command);
    let duration = |name: &str| -> Result2<u64> {
        match flags.string(name) {
            None => Ok(0),
            Some(v) if v.is_empty() => Ok(0),
            Some(v) => match parse_go_duration(&v) {
                None => Err(InstructionErrorKind::BadDuration {
                    flag: name.to_string(),
                    value: v,
                }),
                Some(0) => Ok(0),
                Some(ns) if ns < 1_000_000 => {
                    Err(InstructionErrorKind::DurationTooShort(name.to_string()))
                }
                Some(ns) => Ok(ns),
            },
        }
    };
    let retries = match flags.string("retries") {
        None => 0,
        Some(v) if v.is_empty() => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| InstructionErrorKind::BadRetries(v.clone()))?,
    };
    Ok(Kind::Healthcheck(Healthcheck {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    }))
}

/// Go's `time.ParseDuration` for non-negative durations: `1h2m3.5s`,
/// `300ms`, `10us`; nanoseconds, or `None` when malformed.
pub fn parse_go_duration(text: &str) -> Option<u64> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total <= u64::MAX as f64).then_some(total as u64)
}

/// A `RUN --mount` once its variables are expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// bind, cache, tmpfs, secret or ssh.
    pub kind: MountKind,
    /// `from=`: a stage name or an image for bind and cache mounts.
    pub from: Option<String>,
    /// In a planned [`crate::graph::RunStep`]: the index of the stage `from`
    /// names (`None` when it names an image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<usize>,
    /// `source=`.
    pub source: Option<String>,
    /// `target=`.
    pub target: Option<String>,
    /// Read-only (bind and secret mounts are, unless `rw`).
    pub readonly: bool,
    /// `id=` (cache and secret).
    pub id: Option<String>,
    /// `sharing=shared|private|locked` for cache mounts.
    pub sharing: Option<String>,
    /// `required` for secret and ssh mounts.
    pub required: bool,
    /// `size=` of a tmpfs, in bytes.
    pub size: Option<u64>,
    /// `mode=` (octal).
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
    /// `env=`: expose a secret as this environment variable.
    pub env: Option<String>,
}

/// Mount types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A directory of the context or of a stage.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// A fresh tmpfs.
    Tmpfs,
    /// A secret file.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// The `from=` field of a `--mount` value as written, unexpanded: what
/// BuildKit reads before anything runs to learn which stage a RUN needs.
pub fn mount_from(value: &str) -> Option<String> {
    split_csv(value).ok()?.into_iter().find_map(|field| {
        let (key, v) = field.split_once('=')?;
        key.eq_ignore_ascii_case("from").then(|| v.to_string())
    })
}

/// Parses a `--mount` value (comma-separated `key=value` fields) as written.
pub fn parse_mount(value: &str) -> Result<Mount, InstructionErrorKind> {
    parse_mount_with(value, &mut |v: &str| Ok(v.to_string()))
}

/// Parses a `--mount` value, passing every field value through `expand`
/// (variable expansion) first.
pub fn parse_mount_with(
    value: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Mount, InstructionErrorKind> {
    let bad = |reason: String| InstructionErrorKind::BadMount {
        value: value.to_string(),
        reason,
    };
    let mut m = Mount {
        kind: MountKind::Bind,
        from: None,
        stage: None,
        source: None,
        target: None,
        readonly: true,
        id: None,
        sharing: None,
        required: false,
        size: None,
        mode: None,
        uid: None,
        gid: None,
        env: None,
    };
    let mut ro_set = false;
    let parse_bool = |key: &str, v: &str| match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(bad(format!("invalid value for {key}: {v}"))),
    };
    for field in split_csv(value).map_err(bad)? {
        let (key, v) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(expand(v).map_err(bad)?)),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(v) = v else {
            match key.as_str() {
                "readonly" | "ro" => (m.readonly, ro_set) = (true, true),
                "readwrite" | "rw" => (m.readonly, ro_set) = (false, true),
                "required" if matches!(m.kind, MountKind::Secret | MountKind::Ssh) => {
                    m.required = true;
                }
                "required" => {
                    return Err(bad(format!(
                        "unexpected key 'required' for mount type '{}'",
                        kind_name(m.kind)
                    )))
                }
                _ => {
                    return Err(bad(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )))
                }
            }
            continue;
        };
        match key.as_str() {
            "type" => {
                m.kind = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountKind::Bind,
                    "cache" => MountKind::Cache,
                    "tmpfs" => MountKind::Tmpfs,
                    "secret" => MountKind::Secret,
                    "ssh" => MountKind::Ssh,
                    _ => {
                        let hint =
                            suggest::nearest(&v, ["bind", "cache", "tmpfs", "secret", "ssh"]);
                        return Err(bad(format!(
                            "unsupported mount type {v:?}{}",
                            did_you_mean(&hint.map(str::to_string))
                        )));
                    }
                }
            }
            // BuildKit reads an empty `from=` as none: the context for a
            // bind mount, scratch for a cache mount.
            "from" => m.from = (!v.is_empty()).then_some(v),
            "source" | "src" => m.source = Some(v),
            "target" | "dst" | "destination" => m.target = Some(v),
            "readonly" | "ro" => (m.readonly, ro_set) = (parse_bool(&key, &v)?, true),
            "readwrite" | "rw" => (m.readonly, ro_set) = (!parse_bool(&key, &v)?, true),
            "required" if matches!(m.kind, MountKind::Secret | MountKind::Ssh) => {
                m.required = parse_bool(&key, &v)?;
            }
            "size" if m.kind == MountKind::Tmpfs => {
                m.size = Some(
                    parse_size(&v).ok_or_else(|| bad(format!("invalid value for size: {v}")))?,
                );
            }
            "id" => m.id = Some(v),
            "sharing" => match v.to_ascii_lowercase().as_str() {
                s @ ("shared" | "private" | "locked") => m.sharing = Some(s.to_string()),
                _ => {
                    return Err(bad(format!(
                        "unsupported sharing value {v:?} (shared, private or locked)"
                    )))
                }
            },
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .map_err(|_| bad(format!("invalid value {v} for mode")))?,
                )
            }
            "uid" => {
                m.uid = Some(
                    v.parse()
                        .map_err(|_| bad(format!("invalid value {v} for uid")))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    v.parse()
                        .map_err(|_| bad(format!("invalid value {v} for gid")))?,
                )
            }
            "env" => m.env = Some(v),
            "required" | "size" => {
                return Err(bad(format!(
                    "unexpected key '{key}' for mount type '{}'",
                    kind_name(m.kind)
                )))
            }
            _ => {
                const KEYS: [&str; 19] = [
                    "type",
                    "from",
                    "source",
                    "target",
                    "readonly",
                    "id",
                    "sharing",
                    "required",
                    "size",
                    "mode",
                    "uid",
                    "gid",
                    "src",
                    "dst",
                    "destination",
                    "ro",
                    "rw",
                    "readwrite",
                    "env",
                ];
                let hint = suggest::nearest(&key, KEYS).map(str::to_string);
                return Err(bad(format!(
                    "unexpected key '{key}'{}",
                    did_you_mean(&hint)
                )));
            }
        }
    }
    let file_info = matches!(
        m.kind,
        MountKind::Secret | MountKind::Ssh | MountKind::Cache
    );
    if !file_info && (m.mode.is_some() || m.uid.is_some() || m.gid.is_some()) {
        return Err(bad(format!(
            "mode, uid and gid are not allowed for {} mounts",
            kind_name(m.kind)
        )));
    }
    if !ro_set {
        m.readonly = !matches!(m.kind, MountKind::Cache | MountKind::Tmpfs);
    }
    if m.kind == MountKind::Secret {
        if m.from.is_some() {
            return Err(bad("secret mount should not have a from".to_string()));
        }
        if m.sharing.is_some() {
            return Err(bad("secret mount should not define sharing".to_string()));
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err(bad(
                "a secret mount needs an id, source or target".to_string()
            ));
        }
        if m.source.is_some() && m.id.is_some() {
            return Err(bad("both source and id can't be set".to_string()));
        }
    }
    if m.sharing.is_some() && m.kind != MountKind::Cache {
        return Err(bad(format!(
            "sharing is only for cache mounts, not {}",
            kind_name(m.kind)
        )));
    }
    if matches!(
        m.kind,
        MountKind::Bind | MountKind::Cache | MountKind::Tmpfs
    ) && m.target.is_none()
    {
        return Err(bad("a target is required".to_string()));
    }
    Ok(m)
}

fn kind_name(kind: MountKind) -> &'static str {
    match kind {
        MountKind::Bind => "bind",
        MountKind::Cache => "cache",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Secret => "secret",
        MountKind::Ssh => "ssh",
    }
}

/// One CSV record (RFC 4180 quoting), as `--mount` values are written.
fn split_csv(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if at_start => quoted = true,
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            c => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err("unterminated quote".to_string());
    }
    fields.push(field);
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

/// `64m`, `1g`, `1024`, `10MiB` as docker's RAMInBytes reads them (binary units).
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let number: f64 = v[..digits].parse().ok()?;
    let unit = v[digits..].trim().to_ascii_lowercase();
    let scale: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    Some((number * scale) as u64)
}

crate::span::spanned_error!(InstructionError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Some(5_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("5x"), None);
    }

    #[test]
    fn mounts() {
        let m = parse_mount("type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0755")
            .expect("valid");
        assert_eq!(m.kind, MountKind::Cache);
        assert!(!m.readonly);
        assert_eq!(m.mode, Some(0o755));
        let b = parse_mount("target=/src,rw").expect("valid");
        assert_eq!(b.kind, MountKind::Bind);
        assert!(!b.readonly);
        assert!(parse_mount("type=secret,id=a,from=x").is_err());
        assert!(parse_mount("type=bind,target=/a,mode=0700").is_err());
        let e = parse_mount("type=cahce,target=/a").expect_err("typo");
        assert!(e.to_string().contains("did you mean cache"), "{e}");
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=64m")
                .expect("ok")
                .size,
            Some(64 << 20)
        );
    }

    #[test]
    fn an_empty_mount_from_is_no_from() {
        // BuildKit keeps `from=` as a string, empty when unset: a bind mount
        // of the context, a cache mount from scratch (dockerfile2llb
        // `convert_runmount.go`, `dispatchRunMounts`).
        let from = |v: &str| parse_mount(v).expect("valid").from;
        assert_eq!(from("type=cache,target=/c,from="), None);
        assert_eq!(from("type=bind,target=/c,from=,source=x"), None);
        assert_eq!(
            from("type=cache,target=/c,from=base").as_deref(),
            Some("base")
        );
    }
}
