//! Heredocs as BuildKit's parser reads them (`parser_heredoc_test.go`):
//! delimiters, quoting (no expansion), `<<-` chomping, descriptors, several
//! on one line, and the words that are not heredocs at all.

use estiba_frontend::parser::{self, Heredoc};

fn doc(name: &str, content: &str, expand: bool, chomp: bool, fd: u32) -> Heredoc {
    Heredoc {
        name: name.to_string(),
        fd,
        expand,
        chomp,
        content: content.to_string(),
    }
}

#[test]
fn heredocs_are_extracted_with_their_bodies() {
    let text = "
FROM alpine:3.6

ENV NAME=me

RUN ls

USER <<INVALID
INVALID

RUN <<EMPTY
EMPTY

RUN 3<<EMPTY2
EMPTY2

RUN \"<<NOHEREDOC\"

RUN <<INDENT
\tfoo
\tbar
INDENT

RUN <<-UNINDENT
\tbaz
\tquux
UNINDENT

RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2

RUN <<-EXPAND
\texpand $NAME
EXPAND

RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND

RUN <<COPY
echo hello world
echo foo bar
COPY

RUN <<COMMENT
# internal comment
echo hello world
echo foo bar # trailing comment
COMMENT

RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT

COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2

COPY <<EOF /quotes
\"foo\"
'bar'
EOF

COPY <<X <<Y /dest
Y
X
X
Y

RUN <<COMPLEX python3
print('hello world')
COMPLEX

COPY <<file.txt /dest
hello world
file.txt

RUN <<eo'f'
echo foo
eof

RUN <<eo\\'f
echo foo
eo'f

RUN <<'e'o\\'f
echo foo
eo'f

RUN <<'one two'
echo bar
one two

RUN <<$EOF
$EOF

RUN <<  EOF
EOF

RUN <<  EOF  > foo
EOF
\t";
    let want: Vec<Vec<Heredoc>> = vec![
        vec![],
        vec![],
        vec![],
        vec![], // INVALID: a USER line, not a heredoc body
        vec![doc("EMPTY", "", true, false, 0)],
        vec![doc("EMPTY2", "", true, false, 3)],
        vec![],
        vec![doc("INDENT", "\tfoo\n\tbar\n", true, false, 0)],
        vec![doc("UNINDENT", "\tbaz\n\tquux\n", true, true, 0)],
        vec![doc("UNINDENT2", "\tbaz\n\tquux\n", true, true, 0)],
        vec![doc("EXPAND", "\texpand $NAME\n", true, true, 0)],
        vec![doc("NOEXPAND", "\tdon't expand $NAME\n", false, true, 0)],
        vec![doc(
            "COPY",
            "echo hello world\necho foo bar\n",
            true,
            false,
            0,
        )],
        vec![doc(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
            0,
        )],
        vec![doc("MOUNT", "echo hello\n", true, false, 0)],
        vec![
            doc("FILE1", "content 1\n", true, false, 0),
            doc("FILE2", "content 2\n", true, false, 0),
        ],
        vec![doc("EOF", "\"foo\"\n'bar'\n", true, false, 0)],
        vec![
            doc("X", "Y\n", true, false, 0),
            doc("Y", "X\n", true, false, 0),
        ],
        vec![doc("COMPLEX", "print('hello world')\n", true, false, 0)],
        vec![doc("file.txt", "hello world\n", true, false, 0)],
        vec![doc("eof", "echo foo\n", false, false, 0)],
        vec![doc("eo'f", "echo foo\n", true, false, 0)],
        vec![doc("eo'f", "echo foo\n", false, false, 0)],
        vec![doc("one two", "echo bar\n", false, false, 0)],
        vec![doc("$EOF", "", true, false, 0)],
        vec![doc("EOF", "", true, false, 0)],
        vec![doc("EOF", "", true, false, 0)],
    ];
    let parsed = parser::parse("Dockerfile", text).expect("parses");
    let got: Vec<Vec<Heredoc>> = parsed.nodes[1..]
        .iter()
        .map(|n| n.heredocs.clone())
        .collect();
    assert_eq!(got.len(), want.len(), "instruction count");
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            got,
            want,
            "instruction {} ({})",
            i + 2,
            parsed.nodes[i + 1].original
        );
    }
}

#[test]
fn json_form_never_has_heredocs() {
    let parsed = parser::parse(
        "Dockerfile",
        "FROM alpine\nRUN [\"<<EOF\"]\nCOPY [\"<<EOF\", \"/x\"]\n",
    )
    .expect("parses");
    assert!(parsed.nodes.iter().all(|n| n.heredocs.is_empty()));
    assert_eq!(parsed.nodes.len(), 3);
}

#[test]
fn heredoc_words() {
    for valid in [
        "<<EOF",
        "<<'EOF'",
        "<<\"EOF\"",
        "<<-EOF",
        "<<-'EOF'",
        "<<-\"EOF\"",
        "<<EO\"F\"",
        "<< EOF",
        "<<- EOF",
    ] {
        let doc = parser::parse_heredoc(valid)
            .expect("valid")
            .expect("a heredoc");
        assert_eq!(doc.name, "EOF", "{valid}");
    }
    for invalid in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
        assert!(parser::parse_heredoc(invalid).is_err(), "{invalid}");
    }
    for not in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
        assert_eq!(parser::parse_heredoc(not).expect("no error"), None, "{not}");
    }
}

#[test]
fn heredoc_names_on_a_line() {
    let cases: [(&str, &[&str]); 10] = [
        ("RUN <<EOF\nEOF\n", &["EOF"]),
        ("RUN <<-EOF\nEOF\n", &["EOF"]),
        // BuildKit's lexer keeps blanks after `<<` but not after `<<-`, so
        // this is no heredoc there either (its own test of it is vacuous).
        ("RUN <<- EOF\nEOF\n", &[]),
        ("RUN << -EOF\n-EOF\n", &["-EOF"]),
        ("RUN <<'EOF'\nEOF\n", &["EOF"]),
        ("RUN 4<<EOF\nEOF\n", &["EOF"]),
        ("RUN <<EOF <<EOF2\nEOF\nEOF2\n", &["EOF", "EOF2"]),
        ("RUN '<<EOF'\n", &[]),
        ("RUN \"<<EOF\"\n", &[]),
        ("RUN cat <<EOF > /x\nhi\nEOF\n", &["EOF"]),
    ];
    for (text, names) in cases {
        let parsed = parser::parse("Dockerfile", &format!("FROM a\n{text}")).expect(text);
        let got: Vec<&str> = parsed.nodes[1]
            .heredocs
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(got, names, "{text:?}");
    }
}

#[test]
fn an_onbuild_trigger_keeps_its_heredoc() {
    let parsed =
        parser::parse("Dockerfile", "FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n").expect("parses");
    let onbuild = &parsed.nodes[1];
    assert_eq!((onbuild.span.line, onbuild.span.end_line), (2, 4));
    let ins = estiba_frontend::instructions::parse_instruction(onbuild).expect("valid");
    match ins.kind {
        estiba_frontend::instructions::Kind::Onbuild(expr) => {
            assert_eq!(expr, "RUN <<EOF\necho hi\nEOF")
        }
        other => panic!("not ONBUILD: {other:?}"),
    }
}

#[test]
fn an_unterminated_heredoc_is_an_error_at_its_line() {
    let err = parser::parse("Dockerfile", "FROM a\n\nRUN <<EOF\necho hi\n").expect_err("fails");
    assert_eq!(err.span.line, 3);
    assert!(err.to_string().contains("unterminated heredoc"), "{err}");
}

#[test]
fn chomp_strips_leading_tabs_of_every_line() {
    assert_eq!(
        parser::chomp_heredoc("\t\thello\n\tworld\n"),
        "hello\nworld\n"
    );
}
