//! Table tests for the shell-word lexer: BuildKit's own `envVarTest` and
//! `wordsTest` corpora (copied to `testdata/buildkit-shell/`), plus focused
//! cases for the lexer options taken from BuildKit's `lex_test.go`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use estiba_frontend::shell::{EmptyEnv, Env, Lexer, ShellError};

fn corpus(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/buildkit-shell")
        .join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => panic!("cannot read corpus {}: {err}", path.display()),
    }
}

fn env_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every `A` (all platforms) and `U` (unix) line of `envVarTest`:
/// `platform | input | expected`, where `expected` is `error` for a failure.
#[test]
fn buildkit_env_var_corpus() {
    let text = corpus("envVarTest");
    let env = env_of(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]);
    let lexer = Lexer::new('\\');
    let mut ran = 0;
    let mut failures = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [platform, input, expected] = fields[..] else {
            failures.push(format!("line {number}: malformed: {line:?}"));
            continue;
        };
        let (platform, input, expected) = (platform.trim(), input.trim(), expected.trim());
        match platform {
            "A" | "U" => {}
            "W" => continue,
            other => {
                failures.push(format!("line {number}: unknown platform {other:?}"));
                continue;
            }
        }
        ran += 1;
        let got = lexer.expand_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(value), expected) => value == expected,
            (Err(_), _) => false,
        };
        if !ok {
            failures.push(format!(
                "line {number}: {input:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} envVarTest cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran >= 228, "only {ran} envVarTest cases ran");
}

/// Every case of `wordsTest`: `ENV k=v` lines add to the environment of the
/// lines after them; others are `input|word1,word2,...` (`error` for a
/// failure).
#[test]
fn buildkit_words_corpus() {
    let text = corpus("wordsTest");
    let mut env = BTreeMap::new();
    let lexer = Lexer::new('\\');
    let mut ran = 0;
    let mut failures = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            let assignment = assignment.trim_start_matches(' ');
            let (key, value) = assignment.split_once('=').unwrap_or((assignment, ""));
            env.insert(key.to_string(), value.to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        let [input, expected] = fields[..] else {
            failures.push(format!("line {number}: malformed: {line:?}"));
            continue;
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        ran += 1;
        let got = match lexer.expand_words(input, &env) {
            Ok(words) => words,
            Err(_) => vec!["error".to_string()],
        };
        if got != expected {
            failures.push(format!(
                "line {number}: {input:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} wordsTest cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran >= 24, "only {ran} wordsTest cases ran");
}

/// `expand_word` with the default lexer, for tables below.
fn expand(word: &str, env: &[(&str, &str)]) -> Result<String, ShellError> {
    Lexer::new('\\').expand_word(word, &env_of(env))
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn required_variable_messages() {
    let set = [("VAR", "plain"), ("ARG", "x")];
    let empty = [("VAR", ""), ("ARG", "x")];
    let unset = [("ARG", "x")];
    let no_empty = "${VAR:?message here$ARG}";
    let no_unset = "${VAR?message here$ARG}";

    assert_eq!(expand(no_empty, &set).expect("must expand"), "plain");
    let err = expand(no_empty, &empty).expect_err("must fail");
    assert_eq!(err.to_string(), "VAR: message herex");
    let err = expand(no_empty, &unset).expect_err("must fail");
    assert_eq!(err.to_string(), "VAR: message herex");

    assert_eq!(expand(no_unset, &set).expect("must expand"), "plain");
    assert_eq!(expand(no_unset, &empty).expect("must expand"), "");
    assert_eq!(
        expand(no_unset, &unset).expect_err("must fail").to_string(),
        "VAR: message herex"
    );

    assert_eq!(
        expand("${VAR:?}", &empty)
            .expect_err("must fail")
            .to_string(),
        "VAR: is not allowed to be empty"
    );
    assert_eq!(
        expand("ab${VAR?}", &[]).expect_err("must fail"),
        ShellError::Required {
            name: "VAR".into(),
            message: "is not allowed to be unset".into(),
            offset: 2,
        }
    );
}

/// BuildKit `TestProcessWithMatches`: value, matched and unmatched names, or
/// an error (`None`).
#[test]
fn matches_and_patterns() {
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let foo_bar: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
    let cases: &[Case] = &[
        ("x", &[("DUMMY", "dummy")], Some("x"), &[], &[]),
        (
            "x ${UNUSED}",
            &[("DUMMY", "dummy")],
            Some("x "),
            &[],
            &["UNUSED"],
        ),
        ("x ${FOO}", &[("FOO", "y")], Some("x y"), &["FOO"], &[]),
        (
            "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
            foo_bar,
            Some("xxx  ccc"),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        (
            "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
            foo_bar,
            Some("xxx bbb ccc"),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        ("${FOO:-}", foo_bar, Some("xxx"), &["FOO"], &[]),
        ("${FOO:-}", &[], Some(""), &[], &["FOO"]),
        (
            "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
            foo_bar,
            Some("aaa bbb "),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        (
            "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
            foo_bar,
            Some("aaa  "),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        ("${FOO?aaa}", foo_bar, Some("xxx"), &["FOO"], &[]),
        ("${BAR?bbb}", foo_bar, Some(""), &["BAR"], &[]),
        ("${BAZ?ccc}", foo_bar, None, &[], &[]),
        ("${FOO:?aaa}", foo_bar, Some("xxx"), &["FOO"], &[]),
        ("${BAR:?bbb}", foo_bar, None, &[], &[]),
        ("${BAZ:?ccc}", foo_bar, None, &[], &[]),
        ("${BAZ:?}", foo_bar, None, &[], &[]),
        ("${FOO=aaa}", foo_bar, None, &[], &[]),
        ("${FOO=:aaa}", foo_bar, None, &[], &[]),
        ("${FOO=}", &[], None, &[], &[]),
        (
            "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
            &[("FOO", "()[]{}^$.*?|\\x")],
            Some("x"),
            &["FOO"],
            &[],
        ),
        (
            "${FOO%%\\**}",
            &[("FOO", "xx**")],
            Some("xx"),
            &["FOO"],
            &[],
        ),
        ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y"), &["FOO"], &[]),
        ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        (
            "${FOO#$BAR}",
            &[("FOO", "xxyy"), ("BAR", "x")],
            Some("xyy"),
            &["FOO", "BAR"],
            &[],
        ),
        (
            "${FOO#$BAR}",
            &[("FOO", "xxyy"), ("BAR", "")],
            Some("xxyy"),
            &["FOO", "BAR"],
            &[],
        ),
        ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        ("${FOO##*x}", &[("FOO", "xxyy")], Some("yy"), &["FOO"], &[]),
        ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        ("${FOO#?\\?}", &[("FOO", "???y")], Some("?y"), &["FOO"], &[]),
        (
            "${ABC:-.}${FOO%x}${ABC:-.}",
            &[("FOO", "xxyy")],
            Some(".xxyy."),
            &["FOO"],
            &["ABC"],
        ),
        (
            "${FOO%%\\**\\*}",
            &[("FOO", "a***yy*")],
            Some("a"),
            &["FOO"],
            &[],
        ),
        ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        (
            "${FOO%%$BAR}",
            &[("FOO", "xxyy"), ("BAR", "")],
            Some("xxyy"),
            &["FOO", "BAR"],
            &[],
        ),
        ("${FOO:#}", &[], None, &[], &[]),
        ("${FOO:##}", &[], None, &[], &[]),
        ("${FOO:%}", &[], None, &[], &[]),
        ("${FOO:%%}", &[], None, &[], &[]),
        (
            "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
            Some("/foo.*/*.txt - /foo..*.txt"),
            &["FOO", "NEEDLE"],
            &[],
        ),
        (
            "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
            &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
            Some("/tmp/bar.txt - /bar.txt"),
            &["FOO", "NEEDLE"],
            &[],
        ),
        (
            "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
            &[
                ("FOO", "/a/foo/b/c.txt"),
                ("NEEDLE", "/?/"),
                ("REPLACEMENT", "/"),
            ],
            Some("/foo/b/c.txt - /foo/c.txt"),
            &["FOO", "NEEDLE", "REPLACEMENT"],
            &[],
        ),
        (
            "${FOO/$NEEDLE/$REPLACEMENT}",
            &[
                ("FOO", "http://google.de"),
                ("NEEDLE", "http://"),
                ("REPLACEMENT", "https://"),
            ],
            Some("https://google.de"),
            &["FOO", "NEEDLE", "REPLACEMENT"],
            &[],
        ),
        (
            "${FOO//\\//\\/}",
            &[("FOO", "/tmp/foo.txt")],
            Some("\\/tmp\\/foo.txt"),
            &["FOO"],
            &[],
        ),
        (
            "${FOO/$BAR/ww}",
            &[("FOO", "xxyy"), ("BAR", "")],
            Some("wwxxyy"),
            &["FOO", "BAR"],
            &[],
        ),
        ("${FOO//ww}", &[("FOO", "xxyy")], None, &[], &[]),
        ("${FOO//}", &[("FOO", "xxyy")], None, &[], &[]),
        ("${FOO///}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        ("${FOO///}", &[], Some(""), &[], &["FOO"]),
    ];
    let lexer = Lexer::new('\\');
    let mut failures = Vec::new();
    for &(input, env, expected, matched, unmatched) in cases {
        let got = lexer.expand_word_detailed(input, &env_of(env));
        let ok = match (&got, expected) {
            (Err(_), None) => true,
            (Ok(e), Some(expected)) => {
                e.value == expected
                    && e.matched == names(matched)
                    && e.unmatched == names(unmatched)
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{input:?} with {env:?}: expected {expected:?} matching {matched:?}/{unmatched:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn matches_for_platform_release_name() {
    let release =
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
    let lexer = Lexer::new('\\');
    let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = env_of(&base);
        env.extend(env_of(extra));
        lexer
            .expand_word_with_matches(release, &env)
            .expect("must expand")
    };
    let (value, matched) = with(&[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]);
    assert_eq!(value, "something-v1.2.3.linux-arm-v7.tar.gz");
    assert_eq!(
        matched,
        names(&["TARGETARCH", "TARGETOS", "TARGETVARIANT", "VERSION"])
    );
    let (value, _) = with(&[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]);
    assert_eq!(value, "something-v1.2.3.linux-arm64.tar.gz");
    let (value, matched) = with(&[("TARGETARCH", "arm64")]);
    assert_eq!(value, "something-v1.2.3.linux-arm64.tar.gz");
    assert!(!matched.contains("TARGETVARIANT"));
}

#[test]
fn hash_map_env_works_like_btree_map() {
    let env: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
    assert_eq!(
        Lexer::new('\\')
            .expand_word("$A-${B:-2}", &env)
            .expect("must expand"),
        "1-2"
    );
    let by_ref: &dyn Env = &&env;
    assert_eq!(by_ref.lookup("A"), Some("1"));
}

/// BuildKit's words test under `RawQuotes` + `SkipUnsetEnv`, the mode the
/// parser uses to find heredoc words.
#[test]
fn raw_quotes_keep_quotes_and_skip_unset_keeps_references() {
    let lexer = Lexer::new('\\').raw_quotes(true).skip_unset_env(true);
    let env = env_of(&[("space", "abc  def")]);
    let words = |w: &str| lexer.expand_words(w, &env).expect("must expand");
    assert_eq!(words("hello\"${space}\"bye"), ["hello\"abc  def\"bye"]);
    assert_eq!(words("hello '$there' x"), ["hello", "'$there'", "x"]);
    assert_eq!(words("hello${unset}bye"), ["hello${unset}bye"]);
    assert_eq!(words("a $unset"), ["a", "$unset"]);
    assert_eq!(
        lexer.expand_word("'a b'\"c\"", &env).expect("must expand"),
        "'a b'\"c\""
    );

    let skip = Lexer::new('\\').skip_unset_env(true);
    let expand = |w: &str| skip.expand_word(w, &env).expect("must expand");
    assert_eq!(expand("${X:-a b}"), "${X:-a b}");
    assert_eq!(expand("${X:-$space}"), "${X:-abc  def}");
    assert_eq!(expand("${X#*}|${X%%a}"), "${X#*}|${X%%a}");
    assert_eq!(expand("${X/a/b}"), "${X/a/b}");
    // BuildKit writes the replace-all form back with a single slash.
    assert_eq!(expand("${X//a/b}"), "${X/a/b}");
    // Unsupported modifiers of unset variables pass through untouched...
    assert_eq!(expand("${X:=a}"), "${X:=a}");
    // ...but are still errors for set ones.
    assert!(skip.expand_word("${space:=a}", &env).is_err());
    assert_eq!(expand("${space:-x}"), "abc  def");
}

/// Heredoc detection as BuildKit's parser does it: raw quotes, raw escapes,
/// unset variables kept, and `<<` keeping its following blanks in the word.
#[test]
fn heredoc_markers_stay_one_word() {
    let lexer = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    let words = lexer
        .expand_words("cat <<  \"EOF\" > /dest <<-'END' \\$x", &EmptyEnv)
        .expect("must expand");
    assert_eq!(
        words,
        ["cat", "<<  \"EOF\"", ">", "/dest", "<<-'END'", "\\$x"]
    );
    assert_eq!(
        lexer.expand_word("a\\ b", &EmptyEnv).expect("must expand"),
        "a\\ b"
    );
}

#[test]
fn skip_process_quotes_treats_quotes_as_text() {
    let lexer = Lexer::new('\\').skip_process_quotes(true);
    let env = env_of(&[("FOO", "x")]);
    assert_eq!(
        lexer
            .expand_word("'$FOO' \"$FOO\"", &env)
            .expect("must expand"),
        "'x' \"x\""
    );
    // An unbalanced quote is no error in a heredoc body.
    assert_eq!(
        lexer
            .expand_word("it's ${FOO:-\"}", &env)
            .expect("must expand"),
        "it's x"
    );
    assert_eq!(
        lexer.expand_word("\\$FOO \\\"", &env).expect("must expand"),
        "$FOO \""
    );
}

#[test]
fn backtick_escape() {
    let lexer = Lexer::new('`');
    let env = env_of(&[("PWD", "/home")]);
    let expand = |w: &str| lexer.expand_word(w, &env);
    assert_eq!(expand("he`$PWD").expect("must expand"), "he$PWD");
    assert_eq!(
        expand("c:\\dir\\$PWD").expect("must expand"),
        "c:\\dir\\/home"
    );
    assert_eq!(expand("\"a`\"b``c`d\"").expect("must expand"), "a\"b`c`d");
    assert_eq!(expand("\"c:\\\"").expect("must expand"), "c:\\");
    assert_eq!(expand("a` b`").expect("must expand"), "a b");
    assert_eq!(
        lexer.expand_words("a` b c``", &env).expect("must expand"),
        ["a b", "c`"]
    );
    assert!(expand("\"a`\"").is_err());
}

#[test]
fn raw_escapes_keep_escape_characters() {
    let lexer = Lexer::new('\\').raw_escapes(true);
    let env = env_of(&[("A", "1")]);
    assert_eq!(
        lexer.expand_word("\\$A \\a", &env).expect("must expand"),
        "\\$A \\a"
    );
    // Inside double quotes a kept escape before an ordinary character shows twice,
    // as in BuildKit.
    assert_eq!(
        lexer
            .expand_word("\"\\$A \\t\"", &env)
            .expect("must expand"),
        "\\$A \\\\t"
    );
}

/// BuildKit shares one buffer between a word being split and the word of a
/// nested `${VAR:-…}`, so the part of the current word before such a
/// substitution is lost. `docker build` shows this (e.g. in `EXPOSE`), so we
/// keep it.
#[test]
fn words_before_modifier_substitution_are_dropped_as_in_buildkit() {
    let lexer = Lexer::new('\\');
    let env = env_of(&[("X", "x")]);
    let words = |w: &str| lexer.expand_words(w, &env).expect("must expand");
    assert_eq!(words("a b${U:-c}d"), ["a", "cd"]);
    assert_eq!(words("a b${X}d"), ["a", "bxd"]);
    // Quoted text is added to the word only after the quote closes.
    assert_eq!(words("a x\"b${U:-c}\"d"), ["a", "bcd"]);
    assert_eq!(
        lexer.expand_word("a b${U:-c}d", &env).expect("must expand"),
        "a bcd"
    );
}

#[test]
fn empty_quotes_make_no_word() {
    let lexer = Lexer::new('\\');
    assert_eq!(
        lexer.expand_words("\"\"", &EmptyEnv).expect("must expand"),
        Vec::<String>::new()
    );
    assert_eq!(
        lexer
            .expand_words("a '' b", &EmptyEnv)
            .expect("must expand"),
        ["a", "b"]
    );
    assert_eq!(
        lexer.expand_words("  ", &EmptyEnv).expect("must expand"),
        Vec::<String>::new()
    );
}

#[test]
fn patterns_follow_go_regexp_rules() {
    let nl = [("V", "a\nb.c"), ("P", "/usr/local/bin")];
    // `*` and `?` do not match a newline.
    assert_eq!(expand("${V#*b}", &nl).expect("must expand"), "a\nb.c");
    assert_eq!(expand("${V#a?b}", &nl).expect("must expand"), "a\nb.c");
    assert_eq!(expand("${V%.*}", &nl).expect("must expand"), "a\nb");
    assert_eq!(
        expand("${P#*/}|${P##*/}|${P%/*}|${P%%/*}", &nl).expect("must expand"),
        "usr/local/bin|bin|/usr/local|"
    );
    // Replace-all: `$0` is the match, `$$` a dollar, other names nothing.
    let v = [("V", "abcb")];
    assert_eq!(
        expand("${V//b/<\\$0>}", &v).expect("must expand"),
        "a<\\b>c<\\b>"
    );
    assert_eq!(
        expand("${V//b/'[$0|${0}|$$|$1|${x}|$}|$]'}", &v).expect("must expand"),
        "a[b|b|$|||$}|$]c[b|b|$|||$}|$]"
    );
    // The single replacement has no template.
    assert_eq!(expand("${V/b/'$0'}", &v).expect("must expand"), "a$0cb");
    // Empty matches: one replacement per position, none right after a match.
    assert_eq!(expand("${V//*(/-}", &v).expect("must expand"), "abcb");
    assert_eq!(expand("${V//x*/-}", &v).expect("must expand"), "abcb");
    assert_eq!(expand("${V///-}", &v).expect("must expand"), "-a-b-c-b-");
    // Bad escapes are errors even when the variable is unset.
    assert!(matches!(
        expand("${U#\\a}", &[]),
        Err(ShellError::InvalidPattern {
            escaped: Some('a'),
            ..
        })
    ));
    // Unicode is matched by character.
    let k = [("K", "한국어한")];
    assert_eq!(
        expand("${K#?}|${K%?}|${K/국/-}|${K//한/}", &k).expect("must expand"),
        "국어한|한국어|한-어한|국어"
    );
}

#[test]
fn errors_carry_offsets() {
    let cases: &[(&str, ShellError)] = &[
        ("ab'cd", ShellError::UnterminatedSingleQuote { offset: 2 }),
        ("a\"b", ShellError::UnterminatedDoubleQuote { offset: 1 }),
        ("x${a:-b", ShellError::MissingBrace { offset: 1 }),
        ("x${a/b", ShellError::MissingSlash { offset: 1 }),
        ("x${a", ShellError::MissingBrace { offset: 1 }),
        (
            "xy${}",
            ShellError::BadSubstitution {
                text: "${}".into(),
                offset: 2,
            },
        ),
        (
            "${a:=b}",
            ShellError::UnsupportedModifier {
                modifier: ":=".into(),
                offset: 0,
            },
        ),
        (
            "é${a:%b}",
            ShellError::UnsupportedModifier {
                modifier: ":%".into(),
                offset: 2,
            },
        ),
    ];
    for (input, expected) in cases {
        let got = expand(input, &[]);
        assert_eq!(got.as_ref(), Err(expected), "{input:?}");
        assert_eq!(expected.offset(), got.expect_err("must fail").offset());
    }
    assert_eq!(
        ShellError::BadSubstitution {
            text: "${}".into(),
            offset: 0
        }
        .to_string(),
        "bad substitution: ${}"
    );
}

#[test]
fn positional_and_unicode_names() {
    let env = env_of(&[("1", "one"), ("é", "e"), ("x٣", "arabic digit")]);
    assert_eq!(
        expand("$1 $10 ${1}", &[("1", "one")]).expect("must expand"),
        "one  one"
    );
    // Go's unicode.IsLetter / IsDigit decide what a name is: a combining
    // mark (category Mn) ends it, an Arabic-Indic digit does not.
    let lexer = Lexer::new('\\');
    assert_eq!(
        lexer
            .expand_word("$é\u{301}|$x٣", &env)
            .expect("must expand"),
        "e\u{301}|arabic digit"
    );
    assert_eq!(lexer.expand_word("$٣x", &env).expect("must expand"), "x");
}

#[test]
fn leading_byte_order_mark_is_dropped() {
    assert_eq!(
        expand("\u{FEFF}a\u{FEFF}", &[]).expect("must expand"),
        "a\u{FEFF}"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = "${a:-".repeat(10_000) + &"}".repeat(10_000);
    assert!(matches!(
        expand(&deep, &[]),
        Err(ShellError::TooDeep { .. })
    ));
    let fine = "${a:-".repeat(50) + "x" + &"}".repeat(50);
    assert_eq!(expand(&fine, &[]).expect("must expand"), "x");
}

#[test]
fn no_panic_on_odd_input() {
    let pieces = [
        "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "\\", "`", "'", "\"", "<", "a", "é", "*",
        " ", "\n", "0", "\u{FEFF}",
    ];
    let env = env_of(&[("a", "a*b/c\n"), ("0", "")]);
    let lexers = [
        Lexer::new('\\'),
        Lexer::new('`').raw_quotes(true).raw_escapes(true),
        Lexer::new('\\')
            .skip_unset_env(true)
            .skip_process_quotes(true),
    ];
    // Every string of up to four pieces.
    let mut word = Vec::new();
    fn walk(
        word: &mut Vec<usize>,
        pieces: &[&str],
        lexers: &[Lexer],
        env: &BTreeMap<String, String>,
    ) {
        let text: String = word.iter().map(|&i| pieces[i]).collect();
        for lexer in lexers {
            let _ = lexer.expand_word(&text, env);
            let _ = lexer.expand_words(&text, env);
        }
        if word.len() < 4 {
            for i in 0..pieces.len() {
                word.push(i);
                walk(word, pieces, lexers, env);
                word.pop();
            }
        }
    }
    walk(&mut word, &pieces, &lexers, &env);
}

/// Found by fuzzing: nested `${A//?/…}` replacements multiply the word's
/// length at every level; a hostile Dockerfile must get an error, not the
/// builder's memory.
#[test]
fn nested_global_replacements_cannot_exhaust_memory() {
    use estiba_frontend::shell::ShellError;
    let env: BTreeMap<String, String> = [("A".to_string(), "abc".to_string())].into();
    let depth = 30;
    let word = format!("{}x{}", "${A//?/".repeat(depth), "}".repeat(depth));
    let started = std::time::Instant::now();
    let result = Lexer::new('\\').expand_word(&word, &env);
    assert!(
        matches!(result, Err(ShellError::TooLarge { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // A few levels are fine: `?` matches each of the 3 chars, so 3^3 x's.
    let word = format!("{}x{}", "${A//?/".repeat(3), "}".repeat(3));
    assert_eq!(
        Lexer::new('\\').expand_word(&word, &env).expect("small"),
        "x".repeat(27)
    );
}
