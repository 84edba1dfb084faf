//! Golden plans: `testdata/plan/<case>/Dockerfile` (with optional
//! `build-args`, one `K=V` per line, and `target`) planned and rendered must
//! equal `plan.txt`. `UPDATE_GOLDEN=1 cargo test --test plan_golden` rewrites
//! the expectations; review the diff before committing it.

use estiba_frontend::{plan, NoImages, PlanOptions, Platform};
use std::path::Path;

#[test]
fn every_case_renders_its_golden_plan() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/plan");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("testdata/plan")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let mut opts = PlanOptions::new("Dockerfile");
        // Fixed platforms, so the plan is the same on every machine.
        opts.platform = Platform::parse("linux/amd64").expect("platform");
        opts.build_platform = opts.platform.clone();
        if let Ok(args) = std::fs::read_to_string(case.join("build-args")) {
            for line in args.lines().filter(|l| !l.is_empty()) {
                let (k, v) = line.split_once('=').expect("K=V");
                opts.build_args.insert(k.to_string(), v.to_string());
            }
        }
        if let Ok(target) = std::fs::read_to_string(case.join("target")) {
            opts.target = Some(target.trim().to_string());
        }
        let got = match plan(&text, &opts, &NoImages) {
            Ok(graph) => graph.render(),
            Err(e) => format!("error: {e}\n"),
        };
        let golden = case.join("plan.txt");
        if update {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
