//! Parse + plan of a 2,000-line Dockerfile (target: under 5 ms).
//!
//! `cargo bench -p estiba-frontend --bench plan` prints the median, the best
//! and the worst of 200 runs. The Dockerfile mixes every instruction, ARG and
//! ENV expansion, continuations, heredocs and four stages.
#![allow(clippy::print_stdout)]

use estiba_frontend::{plan, NoImages, PlanOptions};
use std::fmt::Write;
use std::time::{Duration, Instant};

fn dockerfile(lines: usize) -> String {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\nARG VERSION=1.0\n");
    let mut stage = 0;
    let mut i: usize = 0;
    while text.lines().count() < lines {
        if i % 120 == 0 {
            let _ = writeln!(
                text,
                "FROM ${{BASE}}:latest AS stage{stage}\nARG VERSION\nWORKDIR /src/s{stage}"
            );
            stage += 1;
        }
        let _ = match i % 12 {
            0 => writeln!(
                text,
                "ENV KEY_{i}=value-$VERSION OTHER_{i}=\"quoted ${{VERSION:-x}}\""
            ),
            1 => writeln!(
                text,
                "RUN set -e; \\\n    echo step {i} \\\n    && echo $KEY_{}",
                i.saturating_sub(1)
            ),
            2 => writeln!(text, "COPY --chown=1000:1000 src/file{i}.txt ./dir{i}/"),
            3 => writeln!(text, "LABEL org.example.step{i}=\"$VERSION\" other=\"x y\""),
            4 => writeln!(text, "RUN [\"/bin/sh\", \"-c\", \"echo exec {i}\"]"),
            5 => writeln!(text, "EXPOSE {}/tcp", 1000 + i),
            6 => writeln!(text, "ARG OPT_{i}=${{VERSION}}-{i}"),
            7 => writeln!(text, "COPY <<EOF /etc/conf{i}\nkey=$VERSION\nline two\nEOF"),
            8 => writeln!(
                text,
                "RUN --mount=type=cache,target=/root/.cache/{i} echo cached"
            ),
            9 => writeln!(text, "USER 1000:1000"),
            10 => writeln!(text, "ADD https://example.com/{i}.tar.gz /opt/"),
            _ => writeln!(text, "CMD [\"run\", \"{i}\"]"),
        };
        i += 1;
    }
    // The final stage reads every stage, so none is pruned: all is planned.
    text.push_str("FROM scratch\n");
    for s in 0..stage {
        let _ = writeln!(text, "COPY --from=stage{s} /src /src{s}");
    }
    text
}

fn main() {
    let text = dockerfile(2000);
    let lines = text.lines().count();
    let opts = PlanOptions::new("Dockerfile");
    let graph = plan(&text, &opts, &NoImages).expect("the benchmark Dockerfile plans");
    let steps: usize = graph.stages.iter().map(|s| s.steps.len()).sum();
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let start = Instant::now();
            let graph = plan(&text, &opts, &NoImages).expect("plans");
            std::hint::black_box(graph);
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "parse+plan of a {lines}-line Dockerfile ({} stages, {steps} steps): median {:.3} ms, best {:.3} ms, worst {:.3} ms (target < 5 ms)",
        graph.stages.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}
