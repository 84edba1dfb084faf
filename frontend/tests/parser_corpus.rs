//! BuildKit's own parser corpus: every `testfiles/<case>/Dockerfile` must dump
//! to its `result` byte for byte, every negative case must fail, and
//! `testfile-line` must have BuildKit's line ranges.

use estiba_frontend::parser;
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/buildkit-parser")
}

fn cases(dir: &str) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus().join(dir))
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_testfile_dumps_to_its_result() {
    let cases = cases("testfiles");
    assert_eq!(cases.len(), 33, "the corpus has 33 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let want = std::fs::read_to_string(case.join("result")).expect("result");
        match parser::parse("Dockerfile", &text) {
            Ok(parsed) if parsed.dump() == want => {}
            Ok(parsed) => failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{}",
                case.display(),
                parsed.dump()
            )),
            Err(e) => failures.push(format!("{}: error {e}", case.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_negative_testfile_is_rejected() {
    let cases = cases("testfiles-negative");
    assert_eq!(cases.len(), 4);
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let result = estiba_frontend::instructions::parse_text("Dockerfile", &text);
        assert!(result.is_err(), "{} was accepted", case.display());
    }
}

#[test]
fn testfile_line_ranges_match_buildkit() {
    let text =
        std::fs::read_to_string(corpus().join("testfile-line/Dockerfile")).expect("Dockerfile");
    let parsed = parser::parse("Dockerfile", &text).expect("parses");
    let ranges: Vec<(usize, usize)> = parsed
        .nodes
        .iter()
        .map(|n| (n.span.line, n.span.end_line))
        .collect();
    assert_eq!(ranges, vec![(5, 5), (11, 12), (17, 31)]);
}
