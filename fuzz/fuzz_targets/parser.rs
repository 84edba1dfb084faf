//! Any bytes as a Dockerfile: parsing, typing and planning must return Ok or
//! Err, never panic.
#![no_main]

use estiba_frontend::{instructions, parser, plan, NoImages, PlanOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = parser::parse("Dockerfile", &text) {
        let _ = parsed.dump();
        let _ = instructions::parse_all(&parsed);
    }
    let mut opts = PlanOptions::new("Dockerfile");
    opts.build_args.insert("A".into(), "x y".into());
    if let Ok(graph) = plan(&text, &opts, &NoImages) {
        let _ = graph.render();
    }
});
