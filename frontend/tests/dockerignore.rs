//! `.dockerignore` conformance: the moby/patternmatcher test tables
//! (`testdata/dockerignore/cases.json`), one test per table, plus walks that
//! check the tree-walk fast path against the per-path answer.

use std::path::PathBuf;

use estiba_frontend::dockerignore::{
    clean_path, ignore_file_candidates, parse_ignore_file, path_match, IgnoreError, MatchInfo,
    Matcher,
};
use serde_json::Value;

fn cases(key: &str) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/dockerignore/cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let mut all: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()));
    all.get_mut(key)
        .map(Value::take)
        .unwrap_or_else(|| panic!("{} has no key {key:?}", path.display()))
}

fn list(case: &Value, key: &str) -> Vec<String> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not a list in {case}"))
        .iter()
        .map(|item| item.as_str().unwrap_or_default().to_owned())
        .collect()
}

fn text(case: &Value, key: &str) -> String {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {case}"))
        .to_owned()
}

fn flag(case: &Value, key: &str) -> bool {
    case[key].as_bool().unwrap_or(false)
}

/// Fails with every collected failure, after checking enough cases ran.
fn report(table: &str, ran: usize, at_least: usize, failures: &[String]) {
    assert!(
        ran >= at_least,
        "{table}: only {ran} cases ran, expected at least {at_least}"
    );
    assert!(
        failures.is_empty(),
        "{table}: {} of {ran} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// What a tree walk decides for `path`: Docker's `MatchesUsingParentResults`
/// applied to each ancestor in turn, starting from no information.
fn walk_decision(matcher: &Matcher, path: &str) -> Result<bool, IgnoreError> {
    let parent = clean_path(path.rsplit_once('/').map_or(".", |(dir, _)| dir));
    let mut info = MatchInfo::default();
    if parent != "." {
        let elements: Vec<&str> = parent.split('/').collect();
        for end in 1..=elements.len() {
            info = matcher
                .matches_using_parent(&elements[..end].join("/"), info)?
                .1;
        }
    }
    Ok(matcher.matches_using_parent(path, info)?.0)
}

/// The three ways Docker's own test asks "is `text` ignored?" must all agree
/// with `want`.
fn check_all_entry_points(matcher: &Matcher, text: &str, want: bool, label: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |how: &str, got: Result<bool, IgnoreError>| match got {
        Ok(got) if got == want => {}
        Ok(got) => failures.push(format!("{label}: {how} gave {got}, want {want}")),
        Err(error) => failures.push(format!("{label}: {how} failed: {error}")),
    };
    check(
        "matches_or_parent_matches",
        matcher.matches_or_parent_matches(text),
    );
    check(
        "walk with matches_using_parent",
        walk_decision(matcher, text),
    );
    check(
        "matches_using_parent without context",
        matcher
            .matches_using_parent(text, MatchInfo::default())
            .map(|(matched, _)| matched),
    );
    failures
}

/// Docker's package-level `Matches`: compile, clean the path, never ignore
/// the context root, then the deprecated one-ancestor rule.
fn go_matches(text: &str, patterns: &[String]) -> Result<bool, IgnoreError> {
    let matcher = Matcher::new(patterns)?;
    let file = clean_path(text);
    if file == "." {
        return Ok(false);
    }
    matcher.matches(&file)
}

#[test]
fn matches_or_parent_matches() {
    let mut failures = Vec::new();
    let cases = cases("matches_or_parent_matches");
    let cases = cases.as_array().map(Vec::as_slice).unwrap_or_default();
    for case in cases {
        let (pattern, path, want) = (
            text(case, "pattern"),
            text(case, "text"),
            flag(case, "pass"),
        );
        let label = format!("pattern {pattern:?} path {path:?}");
        match Matcher::new(&[&pattern]) {
            Ok(matcher) => failures.extend(check_all_entry_points(&matcher, &path, want, &label)),
            Err(error) => failures.push(format!("{label}: rejected: {error}")),
        }
    }
    report("matches_or_parent_matches", cases.len(), 67, &failures);
}

#[test]
fn multi_pattern() {
    let mut failures = Vec::new();
    let cases = cases("multi_pattern");
    let cases = cases.as_array().map(Vec::as_slice).unwrap_or_default();
    for case in cases {
        let (patterns, path, want) = (
            list(case, "patterns"),
            text(case, "text"),
            flag(case, "pass"),
        );
        let label = format!("patterns {patterns:?} path {path:?}");
        match Matcher::new(&patterns) {
            Ok(matcher) => failures.extend(check_all_entry_points(&matcher, &path, want, &label)),
            Err(error) => failures.push(format!("{label}: rejected: {error}")),
        }
    }
    report("multi_pattern", cases.len(), 4, &failures);
}

#[test]
fn unix_only() {
    let mut failures = Vec::new();
    let cases = cases("unix_only");
    let cases = cases.as_array().map(Vec::as_slice).unwrap_or_default();
    for case in cases {
        let (pattern, path, want) = (
            text(case, "pattern"),
            text(case, "text"),
            flag(case, "pass"),
        );
        let label = format!("pattern {pattern:?} path {path:?}");
        match Matcher::new(&[&pattern]) {
            Ok(matcher) => failures.extend(check_all_entry_points(&matcher, &path, want, &label)),
            Err(error) => failures.push(format!("{label}: rejected: {error}")),
        }
    }
    report("unix_only", cases.len(), 1, &failures);
}

#[test]
fn filepath_match_semantics() {
    let mut failures = Vec::new();
    let cases = cases("filepath_match_semantics");
    let cases = cases.as_array().map(Vec::as_slice).unwrap_or_default();
    for case in cases {
        let (pattern, path) = (text(case, "pattern"), text(case, "text"));
        let (want, want_error) = (flag(case, "match"), flag(case, "bad_pattern_error"));
        let label = format!("pattern {pattern:?} path {path:?}");

        // Through Docker's `Matches`, as the upstream table runs them.
        match (
            go_matches(&path, std::slice::from_ref(&pattern)),
            want_error,
        ) {
            (Err(IgnoreError::BadPattern { .. }), true) => {}
            (Ok(got), false) if got == want => {}
            (got, _) => failures.push(format!(
                "{label}: Matches gave {got:?}, want {}",
                if want_error {
                    "a bad-pattern error".to_owned()
                } else {
                    want.to_string()
                }
            )),
        }

        // And through `path_match` alone, which is Go's `filepath.Match`: the
        // upstream table is Go's own, except that Docker's parent-directory
        // rule turns `a*` against `ab/c` into a match.
        let want_plain = want && !(pattern == "a*" && path == "ab/c");
        match (path_match(&pattern, &path), want_error) {
            (Err(IgnoreError::BadPattern { .. }), true) => {}
            (Ok(got), false) if got == want_plain => {}
            (got, _) => failures.push(format!(
                "{label}: path_match gave {got:?}, want {}",
                if want_error {
                    "a bad-pattern error".to_owned()
                } else {
                    want_plain.to_string()
                }
            )),
        }
    }
    report("filepath_match_semantics", cases.len(), 54, &failures);
}

#[test]
fn simple_matches_api() {
    let mut failures = Vec::new();
    let cases = cases("simple_matches_api");
    let cases = cases.as_array().map(Vec::as_slice).unwrap_or_default();
    for case in cases {
        let (patterns, path, want) = (
            list(case, "patterns"),
            text(case, "text"),
            flag(case, "match"),
        );
        match go_matches(&path, &patterns) {
            Ok(got) if got == want => {}
            got => failures.push(format!(
                "patterns {patterns:?} path {path:?}: got {got:?}, want {want}"
            )),
        }
    }
    report("simple_matches_api", cases.len(), 9, &failures);
}

#[test]
fn errors() {
    let mut failures = Vec::new();
    let cases = cases("errors");
    let cases = cases.as_array().map(Vec::as_slice).unwrap_or_default();
    for case in cases {
        let patterns = list(case, "patterns");
        let path = case["text"].as_str().unwrap_or("fileutils.go");
        let label = format!("patterns {patterns:?} path {path:?}");
        if flag(case, "error") {
            if let Ok(matcher) = Matcher::new(&patterns) {
                failures.push(format!("{label}: accepted as {matcher:?}"));
            }
            match go_matches(path, &patterns) {
                Err(_) => {}
                Ok(got) => failures.push(format!("{label}: Matches gave Ok({got}), want an error")),
            }
        } else if flag(case, "error_on_match") {
            // Accepted, but every match that needs the pattern fails, the
            // second time as the first (moby/moby#52203).
            match Matcher::new(&patterns) {
                Err(error) => failures.push(format!("{label}: rejected early: {error}")),
                Ok(matcher) => {
                    for round in 1..=2 {
                        if let Ok(got) = matcher.matches_or_parent_matches(path) {
                            failures.push(format!("{label}: round {round} matched: {got}"));
                        }
                        if let Ok(got) = matcher.matches_using_parent(path, MatchInfo::default()) {
                            failures.push(format!("{label}: round {round} walk matched: {got:?}"));
                        }
                    }
                }
            }
        } else {
            failures.push(format!(
                "{label}: case expects neither error nor error_on_match"
            ));
        }
    }
    report("errors", cases.len(), 3, &failures);
}

#[test]
fn ignorefile_readall() {
    let case = cases("ignorefile_readall");
    let (input, want) = (text(&case, "input"), list(&case, "expected"));
    let got = parse_ignore_file(&input);
    assert!(want.len() >= 7, "expected list too short: {want:?}");
    assert_eq!(got, want, "parse_ignore_file({input:?})");
}

#[test]
fn error_messages_name_the_pattern() {
    let message = |patterns: &[&str]| match Matcher::new(patterns) {
        Ok(matcher) => format!("accepted: {matcher:?}"),
        Err(error) => error.to_string(),
    };
    assert_eq!(message(&["!"]), "illegal exclusion pattern: \"!\"");
    assert_eq!(message(&["ok", " [ "]), "syntax error in pattern \"[\"");
    let Ok(matcher) = Matcher::new(&["[Local-Only]/"]) else {
        panic!("[Local-Only]/ must pass the filepath.Match check");
    };
    match matcher.matches_or_parent_matches("x") {
        Err(error @ IgnoreError::UnusablePattern { .. }) => {
            assert_eq!(
                error.to_string(),
                "syntax error in pattern \"[Local-Only]/\""
            );
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            assert_eq!(
                cause.as_deref(),
                Some("invalid character class range: `l-O`")
            );
        }
        other => panic!("want UnusablePattern, got {other:?}"),
    }
}

#[test]
fn ignore_file_next_to_the_dockerfile_comes_first() {
    let table: &[(&str, &[&str])] = &[
        ("Dockerfile", &["Dockerfile.dockerignore", ".dockerignore"]),
        ("", &["Dockerfile.dockerignore", ".dockerignore"]),
        (
            "build.Dockerfile",
            &["build.Dockerfile.dockerignore", ".dockerignore"],
        ),
        (
            "Dockerfile.api",
            &["Dockerfile.api.dockerignore", ".dockerignore"],
        ),
        (
            "docker/api.Dockerfile",
            &["docker/api.Dockerfile.dockerignore", ".dockerignore"],
        ),
        ("-", &[".dockerignore"]),
    ];
    for (name, want) in table {
        assert_eq!(ignore_file_candidates(name), *want, "dockerfile {name:?}");
    }
}

#[test]
fn ignore_file_lines_as_docker_reads_them() {
    let input = "\u{feff}# comment after a BOM\r\n  # not a comment\r\n\t./a//b/../c/ \n!  /x/./y\n/\n//\nlast";
    assert_eq!(
        parse_ignore_file(input),
        ["# not a comment", "a/c", "!x/y", "/", "/", "last"]
    );
    assert_eq!(parse_ignore_file(""), Vec::<String>::new());
    assert_eq!(parse_ignore_file("\n\n# only\n"), Vec::<String>::new());
}

#[test]
fn clean_path_matches_go() {
    // From Go's path/filepath clean tests.
    let table = [
        ("", "."),
        ("abc", "abc"),
        ("abc/def", "abc/def"),
        ("a/b/c", "a/b/c"),
        (".", "."),
        ("..", ".."),
        ("../..", "../.."),
        ("../../abc", "../../abc"),
        ("/abc", "/abc"),
        ("/", "/"),
        ("abc/", "abc"),
        ("abc/def/", "abc/def"),
        ("/abc/", "/abc"),
        ("abc//def//ghi", "abc/def/ghi"),
        ("//abc", "/abc"),
        ("///abc", "/abc"),
        ("//abc//", "/abc"),
        ("abc//", "abc"),
        ("abc/./def", "abc/def"),
        ("/./abc/def", "/abc/def"),
        ("abc/.", "abc"),
        ("abc/def/ghi/../jkl", "abc/def/jkl"),
        ("abc/def/../ghi/../jkl", "abc/jkl"),
        ("abc/def/..", "abc"),
        ("abc/def/../..", "."),
        ("/abc/def/../..", "/"),
        ("abc/def/../../..", ".."),
        ("/abc/def/../../..", "/"),
        ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
        ("/../abc", "/abc"),
        ("a/../b:/../../c", "../c"),
        ("abc/./../def", "def"),
        ("abc//./../def", "def"),
        ("abc/../../././../def", "../../def"),
        ("!../x", "!../x"),
    ];
    let failures: Vec<String> = table
        .iter()
        .filter(|(path, want)| clean_path(path) != *want)
        .map(|(path, want)| {
            format!(
                "clean_path({path:?}) = {:?}, want {want:?}",
                clean_path(path)
            )
        })
        .collect();
    report("clean_path", table.len(), 30, &failures);
}

/// A small context: directories end with `/`.
const TREE: &[&str] = &[
    "Dockerfile",
    "README.md",
    ".git/",
    ".git/config",
    ".git/objects/",
    ".git/objects/ab",
    "build/",
    "build/app",
    "build/keep/",
    "build/keep/a.txt",
    "build/keep/deep/",
    "build/keep/deep/b.txt",
    "docs/",
    "docs/README.md",
    "docs/guide.md",
    "docs/img/",
    "docs/img/logo.png",
    "node_modules/",
    "node_modules/pkg/",
    "node_modules/pkg/index.js",
    "src/",
    "src/main.rs",
    "src/debug.log",
    "src/important.log",
    "src/nested/",
    "src/nested/trace.log",
    "src/nested/file.tmp",
    "util/",
    "util/docker/",
    "util/docker/web/",
    "util/docker/web/foo",
    "util/docker/web/bar",
];

/// Walks `TREE` as fsutil does, handing each directory's info to its
/// children, and compares every decision with `matches_or_parent_matches`.
fn walk_disagreements(matcher: &Matcher) -> Vec<String> {
    let mut infos: Vec<(String, MatchInfo)> = Vec::new();
    let mut failures = Vec::new();
    for entry in TREE {
        let (path, is_dir) = match entry.strip_suffix('/') {
            Some(dir) => (dir, true),
            None => (*entry, false),
        };
        let parent = path.rsplit_once('/').map(|(dir, _)| dir);
        let info = parent
            .and_then(|dir| infos.iter().find(|(known, _)| known == dir))
            .map(|(_, info)| *info)
            .unwrap_or_default();
        let walked = matcher.matches_using_parent(path, info);
        let direct = matcher.matches_or_parent_matches(path);
        match (walked, direct) {
            (Ok((walked, info)), Ok(direct)) => {
                if walked != direct {
                    failures.push(format!("{path}: walk {walked}, direct {direct}"));
                }
                if is_dir {
                    infos.push((path.to_owned(), info));
                }
            }
            (walked, direct) => {
                failures.push(format!("{path}: walk {walked:?}, direct {direct:?}"))
            }
        }
    }
    failures
}

fn ignored_paths(matcher: &Matcher) -> Vec<&'static str> {
    TREE.iter()
        .map(|entry| entry.trim_end_matches('/'))
        .filter(|path| matcher.matches_or_parent_matches(path).unwrap_or(false))
        .collect()
}

const PATTERN_SETS: &[&[&str]] = &[
    &[".git", "node_modules", "*.md", "!README.md"],
    &["**/*.log", "!**/important.log", "**/*.tmp"],
    &["build/**", "!build/keep/**"],
    &["docs", "!docs/README.md"],
    &["docs/*", "!docs/img"],
    &["**", "!src", "!Dockerfile"],
    &["**", "!util/docker/web", "util/docker/web/foo"],
    &["*", "!src/*.rs"],
    &["src/*/*.log", ".g?t", "[bn]*"],
];

#[test]
fn walk_with_parent_info_agrees_with_per_path_matching() {
    let mut failures = Vec::new();
    for patterns in PATTERN_SETS {
        let matcher =
            Matcher::new(patterns).unwrap_or_else(|error| panic!("{patterns:?}: {error}"));
        failures.extend(
            walk_disagreements(&matcher)
                .into_iter()
                .map(|failure| format!("{patterns:?}: {failure}")),
        );
    }
    report("walk", PATTERN_SETS.len(), 9, &failures);
}

#[test]
fn walk_with_more_patterns_than_match_info_holds() {
    for patterns in PATTERN_SETS {
        // 200 patterns that match nothing in TREE, then the real ones.
        let mut many: Vec<String> = (0..200).map(|i| format!("absent-{i}/**")).collect();
        many.extend(patterns.iter().map(|pattern| pattern.to_string()));
        let small = Matcher::new(patterns).unwrap_or_else(|error| panic!("{patterns:?}: {error}"));
        let large = Matcher::new(&many).unwrap_or_else(|error| panic!("{patterns:?}: {error}"));
        assert_eq!(large.len(), small.len() + 200);
        assert_eq!(
            walk_disagreements(&large),
            Vec::<String>::new(),
            "{patterns:?}"
        );
        assert_eq!(ignored_paths(&large), ignored_paths(&small), "{patterns:?}");
    }
}

#[test]
fn walk_and_per_path_matching_disagree_where_docker_does() {
    // At `d` nothing is excluded yet, so the walk never tries `!d` there; at
    // `d/f` it only tries `!d` against `d/f` itself. Docker's two entry
    // points answer differently, and so do ours.
    let matcher = Matcher::new(&["d/f", "!d"]).unwrap_or_else(|error| panic!("{error}"));
    let (dir, info) = matcher
        .matches_using_parent("d", MatchInfo::default())
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(!dir);
    let (walked, _) = matcher
        .matches_using_parent("d/f", info)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(walked, "the walk ignores d/f");
    assert_eq!(matcher.matches_or_parent_matches("d/f").ok(), Some(false));
}

#[test]
fn match_info_from_another_matcher_is_refused() {
    let one = Matcher::new(&["a"]).unwrap_or_else(|error| panic!("{error}"));
    let two = Matcher::new(&["a", "b"]).unwrap_or_else(|error| panic!("{error}"));
    let (_, info) = one
        .matches_using_parent("a", MatchInfo::default())
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(matches!(
        two.matches_using_parent("a/x", info),
        Err(IgnoreError::MatchInfoMismatch {
            got: 1,
            expected: 2
        })
    ));
}

#[test]
fn docker_quirks_are_kept() {
    let ignored = |patterns: &[&str], path: &str| {
        Matcher::new(patterns)
            .and_then(|matcher| matcher.matches_or_parent_matches(path))
            .unwrap_or_else(|error| panic!("{patterns:?} {path:?}: {error}"))
    };
    // `**name` is a plain suffix test, not `**/name`.
    assert!(ignored(&["**file"], "dir/myfile"));
    assert!(!ignored(&["**/file"], "dir/myfile"));
    // A `*` inside a class becomes Docker's `[^/]*`, which closes the class
    // early: `[*]` is the class `[[^/]` repeated, then a literal `]`.
    assert!(ignored(&["[*]"], "]"));
    assert!(ignored(&["[*]"], "[^]"));
    assert!(!ignored(&["[*]"], "*"));
    // Regular-expression escapes reach Go's regexp: `\d` is a digit.
    assert!(ignored(&["v\\d"], "v1"));
    assert!(!ignored(&["v\\d"], "vd"));
    // A `^` outside a class is an anchor once the pattern needs a regexp.
    assert!(ignored(&["^a*"], "abc"));
    assert!(ignored(&["^a"], "^a"));
    // Docker leaves `{`, `|` and `}` unescaped (its escape bitmap overflows
    // above 0x3F): in a pattern that needs a regexp they are operators.
    assert!(ignored(&["a|b*"], "zb"));
    assert!(ignored(&["a|b*"], "a/q"));
    assert!(ignored(&["q|*b"], "q"));
    assert!(!ignored(&["q|*b"], "a/q"));
    assert!(ignored(&["a{2}*"], "aab"));
    assert!(!ignored(&["a{2}*"], "a"));
    assert!(ignored(&["*.{js,ts}"], "x.{js,ts}"));
    assert!(!ignored(&["*.{js,ts}"], "x.js"));
    // Without a wildcard the pattern is compared as it is.
    assert!(!ignored(&["a{2}"], "aa"));
    assert!(ignored(&["a{2}"], "a{2}"));
    // Leading `/`, `./` and trailing `/` are cleaned away by the matcher too.
    assert!(ignored(&["./src/"], "src/main.rs"));
    // Patterns are trimmed; the path is not.
    assert!(ignored(&["  *.log  "], "a.log"));
    // Patterns are cleaned: `a/../b` is `b`.
    assert!(ignored(&["a/../b"], "b"));
}

#[test]
fn non_utf8_paths_match_like_go() {
    let matcher = Matcher::new(&["a?b", "*.bin"]).unwrap_or_else(|error| panic!("{error}"));
    // An invalid byte is one character to `?`.
    assert_eq!(
        matcher.matches_or_parent_matches_bytes(b"a\xffb").ok(),
        Some(true)
    );
    assert_eq!(
        matcher.matches_or_parent_matches_bytes(b"x\xff.bin").ok(),
        Some(true)
    );
    assert_eq!(
        matcher.matches_or_parent_matches_bytes(b"a\xff\xfeb").ok(),
        Some(false)
    );
}
