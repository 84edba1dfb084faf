//! Every Dockerfile of Buildah's conformance suite that docker accepts must
//! parse and plan; the ones upstream expects to fail at an instruction the
//! frontend can judge (a bad quote, say) must fail at that instruction's line.
//! Failures that need the filesystem (a missing COPY source) belong to the
//! executor and are only required to plan here.

use estiba_frontend::{instructions::Kind, parser, plan, NoImages, PlanOptions};
use std::path::Path;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    dockerfile_text: String,
    should_fail_at: usize,
    without_docker: bool,
}

#[test]
fn every_case_plans_or_fails_where_upstream_fails() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/buildah-conformance/cases.json");
    let text = std::fs::read_to_string(path).expect("cases.json");
    let cases: Vec<Case> = serde_json::from_str(&text).expect("cases");
    assert_eq!(cases.len(), 187);
    let mut failures = Vec::new();
    let (mut planned, mut rejected) = (0, 0);
    for case in &cases {
        let opts = PlanOptions::new("Dockerfile");
        let result = plan(&case.dockerfile_text, &opts, &NoImages);
        match (&result, case.should_fail_at) {
            (Ok(_), 0) => planned += 1,
            (Err(e), 0) if !case.without_docker => {
                failures.push(format!("{}: rejected: {e}", case.name));
            }
            (Err(_), 0) => rejected += 1,
            (Err(e), n) => {
                let nodes = parser::parse("Dockerfile", &case.dockerfile_text).map(|p| p.nodes);
                let want = nodes
                    .ok()
                    .and_then(|nodes| nodes.get(n - 1).map(|node| node.span.line));
                let got = e.span().map(|s| s.line);
                if want.is_some() && got == want {
                    rejected += 1;
                } else {
                    failures.push(format!("{}: failed at line {got:?}, upstream at instruction {n} (line {want:?}): {e}", case.name));
                }
            }
            (Ok(_), n) => {
                // Accepted: the failure must be one only execution can see.
                let ins =
                    estiba_frontend::instructions::parse_text("Dockerfile", &case.dockerfile_text)
                        .expect("planned, so it parses");
                match ins.get(n - 1).map(|i| &i.kind) {
                    Some(Kind::Copy(_) | Kind::Add(_) | Kind::Run(_)) => planned += 1,
                    other => failures.push(format!(
                        "{}: planned, but upstream fails at instruction {n} ({other:?})",
                        case.name
                    )),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(planned >= 170, "only {planned} cases planned");
    assert!(
        rejected >= 2,
        "the two bad-quote cases must be rejected, {rejected} were"
    );
}
