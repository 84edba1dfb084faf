//! What the planner makes of a Dockerfile, with BuildKit's `dockerfile2llb`
//! (`convert.go`) and its integration tests (`frontend/dockerfile/*_test.go`)
//! as the spec: ARG/ENV scoping, stage resolution and pruning, ONBUILD
//! triggers, where variables are expanded, the image config, the history
//! lines, RUN heredocs, and where errors point.
//!
//! Each test builds a plan for a small Dockerfile and checks specific
//! values; base images come from [`Images`], a resolver over a fixed table.

use estiba_frontend::graph::{Base, BuildGraph, CopySource, CopyStep, Op, RunStep, Stage, Step};
use estiba_frontend::instructions::{Healthcheck, MountKind};
use estiba_frontend::{
    plan, BaseImage, BaseResolver, Error, ImageConfig, PlanOptions, Platform, ResolveError,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------
// Helpers

/// Base images by reference; remembers every lookup and the platform asked for.
#[derive(Default)]
struct Images {
    images: BTreeMap<String, BaseImage>,
    refused: BTreeMap<String, String>,
    asked: RefCell<Vec<(String, String)>>,
}

impl Images {
    fn refusing(mut self, reference: &str, message: &str) -> Self {
        self.refused
            .insert(reference.to_string(), message.to_string());
        self
    }

    fn with(mut self, reference: &str, config: ImageConfig) -> Self {
        let digest = format!("sha256:{:064x}", self.images.len() + 1);
        self.images.insert(
            reference.to_string(),
            BaseImage {
                digest: Some(digest),
                config,
                platform: Some(platform("linux/amd64")),
            },
        );
        self
    }

    fn asked(&self) -> Vec<(String, String)> {
        self.asked.borrow().clone()
    }
}

impl BaseResolver for Images {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<BaseImage>, ResolveError> {
        self.asked
            .borrow_mut()
            .push((reference.to_string(), platform.to_string()));
        if let Some(message) = self.refused.get(reference) {
            return Err(message.clone().into());
        }
        Ok(self.images.get(reference).cloned())
    }
}

fn platform(text: &str) -> Platform {
    Platform::parse(text).expect("a valid platform")
}

/// Builds for linux/amd64 on linux/arm64, so target and build platform differ.
fn opts() -> PlanOptions {
    let mut o = PlanOptions::new("Dockerfile");
    o.platform = platform("linux/amd64");
    o.build_platform = platform("linux/arm64");
    o
}

fn with_args(pairs: &[(&str, &str)]) -> PlanOptions {
    let mut o = opts();
    for (k, v) in pairs {
        o.build_args.insert(k.to_string(), v.to_string());
    }
    o
}

fn with_target(target: &str) -> PlanOptions {
    let mut o = opts();
    o.target = Some(target.to_string());
    o
}

fn build(dockerfile: &str) -> BuildGraph {
    build_with(dockerfile, &opts(), &Images::default())
}

fn build_with(dockerfile: &str, opts: &PlanOptions, images: &Images) -> BuildGraph {
    match plan(dockerfile, opts, images) {
        Ok(graph) => graph,
        Err(e) => panic!("plan failed: {}\n{dockerfile}", chain(&e)),
    }
}

fn fail(dockerfile: &str) -> Error {
    fail_with(dockerfile, &opts(), &Images::default())
}

fn fail_with(dockerfile: &str, opts: &PlanOptions, images: &Images) -> Error {
    match plan(dockerfile, opts, images) {
        Ok(graph) => panic!("planned, expected an error:\n{}", graph.render()),
        Err(e) => e,
    }
}

/// The error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn error_line(e: &Error) -> Option<usize> {
    e.span().map(|s| s.line)
}

fn target(graph: &BuildGraph) -> &Stage {
    &graph.stages[graph.target]
}

fn run_of(step: &Step) -> &RunStep {
    match &step.op {
        Op::Run(run) => run,
        other => panic!("expected RUN, got {other:?}"),
    }
}

fn copy_of(step: &Step) -> &CopyStep {
    match &step.op {
        Op::Copy(copy) => copy,
        other => panic!("expected COPY/ADD, got {other:?}"),
    }
}

/// The RUN steps of a stage, in order.
fn runs(stage: &Stage) -> Vec<&RunStep> {
    stage
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Run(run) => Some(run),
            _ => None,
        })
        .collect()
}

fn history(stage: &Stage) -> Vec<&str> {
    stage.steps.iter().map(|s| s.created_by.as_str()).collect()
}

/// The value of `key` in a `K=V` list.
fn lookup<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn env_of<'a>(stage: &'a Stage, key: &str) -> Option<&'a str> {
    stage.config.env_value(key)
}

fn image_ref(stage: &Stage) -> &str {
    match &stage.base {
        Base::Image { reference, .. } => reference,
        other => panic!("expected an image base, got {other:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn indexes(items: &[usize]) -> BTreeSet<usize> {
    items.iter().copied().collect()
}

fn needed(graph: &BuildGraph) -> Vec<bool> {
    graph.stages.iter().map(|s| s.needed).collect()
}

// ---------------------------------------------------------------------------
// ARG and ENV scoping

#[test]
fn global_arg_is_usable_in_from() {
    let g = build("ARG TAG=1\nFROM img:$TAG\n");
    assert_eq!(image_ref(&g.stages[0]), "img:1");
}

#[test]
fn global_arg_is_invisible_in_a_stage_until_redeclared() {
    let g = build(
        "ARG TAG=1\nFROM scratch\nENV BEFORE=x$TAG\nRUN one\nARG TAG\nENV AFTER=x$TAG\nRUN two\n",
    );
    let s = target(&g);
    assert_eq!(env_of(s, "BEFORE"), Some("x"));
    assert_eq!(env_of(s, "AFTER"), Some("x1"));
    let runs = runs(s);
    assert_eq!(lookup(&runs[0].env, "TAG"), None);
    assert_eq!(lookup(&runs[1].env, "TAG"), Some("1"));
    assert_eq!(s.steps[2].created_by, "ARG TAG=1");
}

#[test]
fn redeclared_global_arg_with_a_default_takes_the_default() {
    let g = build("ARG V=global\nFROM scratch\nARG V=local\nENV R=$V\n");
    assert_eq!(env_of(target(&g), "R"), Some("local"));
}

#[test]
fn build_arg_overrides_a_global_arg_in_from_and_in_the_stage() {
    let g = build_with(
        "ARG TAG=1\nFROM img:$TAG\nARG TAG\nENV R=$TAG\n",
        &with_args(&[("TAG", "2")]),
        &Images::default(),
    );
    assert_eq!(image_ref(target(&g)), "img:2");
    assert_eq!(env_of(target(&g), "R"), Some("2"));
}

#[test]
fn build_arg_overrides_a_stage_arg_default() {
    let g = build_with(
        "FROM scratch\nARG V=local\nENV R=$V\n",
        &with_args(&[("V", "cli")]),
        &Images::default(),
    );
    assert_eq!(env_of(target(&g), "R"), Some("cli"));
    assert_eq!(history(target(&g))[0], "ARG V=cli");
}

#[test]
fn arg_default_expands_earlier_args_and_env() {
    let g = build("FROM scratch\nENV E=env\nARG A=arg\nARG B=${A}-${E}\nENV R=$B\n");
    assert_eq!(env_of(target(&g), "R"), Some("arg-env"));
    assert_eq!(history(target(&g))[2], "ARG B=arg-env");
}

// testQuotedMetaArgs
#[test]
fn global_arg_default_expands_earlier_global_args() {
    let g = build(
        "ARG a1=\"box\"\nARG a2=\"$a1-foo\"\nFROM busy$a1 AS build\nARG a2\nARG a3=\"bar-$a2\"\nRUN echo -n $a3 > /out\n",
    );
    let s = target(&g);
    assert_eq!(image_ref(s), "busybox");
    assert_eq!(lookup(&runs(s)[0].env, "a3"), Some("bar-box-foo"));
    assert_eq!(
        history(s)[2],
        "RUN |2 a2=box-foo a3=bar-box-foo /bin/sh -c echo -n $a3 > /out # buildkit"
    );
}

// testMultiArgs
#[test]
fn one_arg_instruction_declares_several_names() {
    let g = build(
        "ARG a1=\"foo bar\" a2=box\nARG a3=\"$a2-foo\"\nFROM busy$a2 AS build\nARG a3 a4=\"123 456\" a1\nRUN echo -n \"$a1:$a3:$a4\" > /out\n",
    );
    let s = target(&g);
    assert_eq!(image_ref(s), "busybox");
    let env = &runs(s)[0].env;
    assert_eq!(lookup(env, "a1"), Some("foo bar"));
    assert_eq!(lookup(env, "a3"), Some("box-foo"));
    assert_eq!(lookup(env, "a4"), Some("123 456"));
    assert_eq!(history(s)[0], "ARG a3=box-foo a4=123 456 a1=foo bar");
}

// testGlobalArgErrors
#[test]
fn required_global_arg_fails_with_its_message_unless_given() {
    let dockerfile = "ARG FOO=${FOO:?\"custom error\"}\nFROM busybox\n";
    let e = fail(dockerfile);
    assert!(chain(&e).contains("FOO: custom error"), "{}", chain(&e));
    assert_eq!(error_line(&e), Some(1));
    let g = build_with(
        dockerfile,
        &with_args(&[("FOO", "bar")]),
        &Images::default(),
    );
    assert_eq!(image_ref(target(&g)), "busybox");
}

// testArgDefaultExpansion
#[test]
fn arg_default_is_not_expanded_when_a_build_arg_gives_the_value() {
    let dockerfile = "FROM scratch\nARG FOO\nARG BAR=${FOO:?\"foo missing\"}\n";
    let e = fail(dockerfile);
    assert!(chain(&e).contains("FOO: foo missing"), "{}", chain(&e));
    assert_eq!(error_line(&e), Some(3));
    for arg in [("FOO", "123"), ("BAR", "123")] {
        let g = build_with(dockerfile, &with_args(&[arg]), &Images::default());
        assert_eq!(history(target(&g))[1], "ARG BAR=123");
    }
}

#[test]
fn env_after_arg_wins_for_run_and_expansion() {
    let g = build("FROM scratch\nARG X=arg\nENV X=env\nENV R=$X\nRUN true\n");
    let s = target(&g);
    assert_eq!(env_of(s, "R"), Some("env"));
    assert_eq!(env_of(s, "X"), Some("env"));
    assert_eq!(lookup(&runs(s)[0].env, "X"), Some("env"));
    assert_eq!(history(s)[3], "RUN |1 X=env /bin/sh -c true # buildkit");
}

#[test]
fn arg_after_env_wins_for_run_and_expansion_but_not_in_the_image() {
    let g = build("FROM scratch\nENV Y=env\nARG Y=arg\nENV R=$Y\nRUN true\n");
    let s = target(&g);
    assert_eq!(env_of(s, "R"), Some("arg"));
    assert_eq!(env_of(s, "Y"), Some("env"));
    assert_eq!(lookup(&runs(s)[0].env, "Y"), Some("arg"));
}

#[test]
fn env_pairs_expand_against_the_env_before_the_instruction() {
    let g = build("FROM scratch\nENV a=1 b=$a\nENV c=$a\n");
    let s = target(&g);
    assert_eq!(env_of(s, "b"), Some(""));
    assert_eq!(env_of(s, "c"), Some("1"));
    assert_eq!(history(s)[0], "ENV a=1 b=");
}

#[test]
fn env_can_extend_the_default_path() {
    let g = build("FROM scratch\nENV PATH=/opt/bin:$PATH\n");
    let want = format!("PATH=/opt/bin:{}", &DEFAULT_PATH["PATH=".len()..]);
    assert_eq!(target(&g).config.env, vec![want]);
}

// testDefaultEnvWithArgs
#[test]
fn legacy_env_form_with_arg_modifiers() {
    let dockerfile = "ARG image=idlebox\nFROM busy${image#idle} AS build\nARG my_arg\nENV my_arg \"my_arg=${my_arg:-def_val}\"\nENV my_trimmed_arg \"${my_arg%%e*}\"\n";
    for (args, value, trimmed) in [
        (vec![], "my_arg=def_val", "my_arg=d"),
        (vec![("my_arg", "")], "my_arg=def_val", "my_arg=d"),
        (vec![("my_arg", "override")], "my_arg=override", "my_arg=ov"),
    ] {
        let g = build_with(dockerfile, &with_args(&args), &Images::default());
        let s = target(&g);
        assert_eq!(image_ref(s), "busybox");
        assert_eq!(env_of(s, "my_arg"), Some(value), "{args:?}");
        assert_eq!(env_of(s, "my_trimmed_arg"), Some(trimmed), "{args:?}");
    }
}

// testEmptyStringArgInEnv
#[test]
fn empty_arg_is_in_the_run_env_and_an_unset_one_is_not() {
    let g = build("FROM busybox\nARG FOO\nARG BAR=\nRUN env\n");
    let s = target(&g);
    let env = &runs(s)[0].env;
    assert_eq!(lookup(env, "BAR"), Some(""));
    assert!(!env.iter().any(|kv| kv.starts_with("FOO")), "{env:?}");
    assert_eq!(
        history(s),
        [
            "ARG FOO",
            "ARG BAR=",
            "RUN |2 FOO= BAR= /bin/sh -c env # buildkit"
        ]
    );
}

// testExportedHistoryFlattenArgs (moby/buildkit#5505)
#[test]
fn run_history_lists_each_arg_once_with_its_last_value() {
    let g = build("FROM busybox\nARG foo=bar\nARG bar=123\nARG foo=bar2\nRUN ls /etc/\n");
    assert_eq!(
        history(target(&g)),
        [
            "ARG foo=bar",
            "ARG bar=123",
            "ARG foo=bar2",
            "RUN |2 foo=bar2 bar=123 /bin/sh -c ls /etc/ # buildkit"
        ]
    );
}

#[test]
fn run_env_moves_a_reassigned_variable_to_the_end() {
    // An LLB env list appends on every write; the image config replaces in place.
    let g = build("FROM scratch\nENV A=1\nENV B=2\nENV A=3\nRUN env\n");
    let s = target(&g);
    assert_eq!(runs(s)[0].env, strings(&[DEFAULT_PATH, "B=2", "A=3"]));
    assert_eq!(s.config.env, strings(&[DEFAULT_PATH, "A=3", "B=2"]));
}

// testTargetStageNameArg
#[test]
fn targetstage_names_the_target_stage_or_default() {
    let dockerfile = "FROM alpine AS base\nRUN echo $TARGETSTAGE\nARG TARGETSTAGE\nRUN echo $TARGETSTAGE\nFROM scratch AS foo\nCOPY --from=base /out/ /\nFROM scratch\nCOPY --from=base /out/ /\n";
    let value = |g: &BuildGraph| {
        let runs = runs(&g.stages[0]);
        assert_eq!(lookup(&runs[0].env, "TARGETSTAGE"), None);
        lookup(&runs[1].env, "TARGETSTAGE").map(str::to_string)
    };
    let g = build_with(dockerfile, &with_target("foo"), &Images::default());
    assert_eq!(value(&g).as_deref(), Some("foo"));
    let g = build(dockerfile);
    assert_eq!(value(&g).as_deref(), Some("default"));
    let g = build(&format!(
        "{dockerfile}FROM scratch AS final\nCOPY --from=base /out/ /\n"
    ));
    assert_eq!(value(&g).as_deref(), Some("final"));
}

#[test]
fn platform_args_are_usable_in_from() {
    let g = build("FROM img-$TARGETARCH:$TARGETOS-$BUILDARCH\n");
    assert_eq!(image_ref(target(&g)), "img-amd64:linux-arm64");
}

#[test]
fn platform_args_are_invisible_in_a_stage_until_declared() {
    let g = build(
        "FROM busybox\nRUN one\nENV A=x$TARGETARCH\nARG TARGETARCH\nARG TARGETPLATFORM\nRUN two\n",
    );
    let s = target(&g);
    assert_eq!(env_of(s, "A"), Some("x"));
    let runs = runs(s);
    assert_eq!(lookup(&runs[0].env, "TARGETARCH"), None);
    assert_eq!(lookup(&runs[1].env, "TARGETARCH"), Some("amd64"));
    assert_eq!(lookup(&runs[1].env, "TARGETPLATFORM"), Some("linux/amd64"));
}

#[test]
fn from_platform_buildplatform_builds_on_the_build_platform() {
    let images = Images::default();
    let g = build_with(
        "FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETARCH\nARG BUILDARCH\nRUN go build\nFROM scratch\nCOPY --from=build /app /app\n",
        &opts(),
        &images,
    );
    assert_eq!(g.stages[0].platform, platform("linux/arm64"));
    assert_eq!(g.stages[1].platform, platform("linux/amd64"));
    let env = &runs(&g.stages[0])[0].env;
    assert_eq!(lookup(env, "TARGETARCH"), Some("amd64"));
    assert_eq!(lookup(env, "BUILDARCH"), Some("arm64"));
    assert_eq!(
        images.asked(),
        [("golang".to_string(), "linux/arm64".to_string())]
    );
}

#[test]
fn unused_build_arg_is_a_warning_naming_it() {
    let g = build_with(
        "ARG GLOBAL\nFROM scratch\nARG USED\n",
        &with_args(&[
            ("USED", "1"),
            ("GLOBAL", "2"),
            ("UNUSED", "3"),
            ("HTTP_PROXY", "http://proxy"),
            ("no_proxy", "localhost"),
            ("TARGETARCH", "amd64"),
        ]),
        &Images::default(),
    );
    let messages: Vec<&str> = g.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        messages,
        ["one or more build args were not consumed: [UNUSED]"]
    );
}

#[test]
fn declared_and_proxy_build_args_make_no_warning() {
    let g = build_with(
        "ARG GLOBAL\nFROM scratch\nARG USED\n",
        &with_args(&[("USED", "1"), ("GLOBAL", "2"), ("https_proxy", "http://p")]),
        &Images::default(),
    );
    assert!(g.warnings.is_empty(), "{:?}", g.warnings);
}

// testBuiltinArgs
#[test]
fn proxy_build_args_reach_run_in_both_cases_but_never_history() {
    let g = build_with(
        "FROM busybox\nARG FOO\nRUN echo -n $HTTP_PROXY::$NO_PROXY::$FOO > /out\n",
        &with_args(&[
            ("FOO", "foocontents"),
            ("http_proxy", "hpvalue"),
            ("NO_PROXY", "npvalue"),
        ]),
        &Images::default(),
    );
    let s = target(&g);
    let run = runs(s)[0];
    assert_eq!(
        run.proxy_env,
        strings(&[
            "HTTP_PROXY=hpvalue",
            "http_proxy=hpvalue",
            "NO_PROXY=npvalue",
            "no_proxy=npvalue"
        ])
    );
    assert_eq!(lookup(&run.env, "http_proxy"), None);
    assert_eq!(
        history(s)[1],
        "RUN |1 FOO=foocontents /bin/sh -c echo -n $HTTP_PROXY::$NO_PROXY::$FOO > /out # buildkit"
    );
    assert!(s
        .config
        .env
        .iter()
        .all(|kv| !kv.to_lowercase().contains("proxy")));
}

#[test]
fn sbom_scan_args_never_reach_the_run_env() {
    let g = build_with(
        "FROM busybox\nARG BUILDKIT_SBOM_SCAN_STAGE=true\nRUN true\n",
        &opts(),
        &Images::default(),
    );
    let s = target(&g);
    assert_eq!(lookup(&runs(s)[0].env, "BUILDKIT_SBOM_SCAN_STAGE"), None);
    assert_eq!(
        history(s)[1],
        "RUN |1 BUILDKIT_SBOM_SCAN_STAGE=true /bin/sh -c true # buildkit"
    );
}

// ---------------------------------------------------------------------------
// Stages, targets, pruning

#[test]
fn stage_names_match_case_insensitively_in_copy_from_and_target() {
    let dockerfile =
        "FROM busybox AS Build\nRUN make\nFROM build\nFROM scratch\nCOPY --from=BUILD /a /b\n";
    let g = build(dockerfile);
    assert_eq!(g.stages[0].name.as_deref(), Some("build"));
    assert_eq!(g.stages[1].base, Base::Stage { index: 0 });
    assert_eq!(
        copy_of(&g.stages[2].steps[0]).from,
        CopySource::Stage { index: 0 }
    );
    let g = build_with(dockerfile, &with_target("BUILD"), &Images::default());
    assert_eq!(g.target, 0);
}

#[test]
fn from_names_a_stage_only_in_its_lower_case_spelling() {
    // BuildKit looks FROM up as written among lower-cased stage names.
    let g = build("FROM busybox AS build\nFROM Build\n");
    assert_eq!(image_ref(&g.stages[1]), "Build");
}

#[test]
fn stage_inherits_its_base_stage() {
    let g = build(
        "FROM busybox AS base\nARG V=1\nENV E=e\nWORKDIR /app\nUSER nobody\nFROM base\nENV R=$V-$E\nRUN true\n",
    );
    let s = target(&g);
    assert_eq!(s.base, Base::Stage { index: 0 });
    assert_eq!(s.deps, indexes(&[0]));
    assert_eq!(env_of(s, "R"), Some("1-e"));
    assert_eq!(s.config.working_dir, "/app");
    let run = runs(s)[0];
    assert_eq!(lookup(&run.env, "V"), Some("1"));
    assert_eq!(run.workdir, "/app");
    assert_eq!(run.user, "nobody");
    assert_eq!(history(s)[1], "RUN |1 V=1 /bin/sh -c true # buildkit");
}

#[test]
fn stage_built_on_a_stage_keeps_the_parent_platform() {
    let g =
        build("FROM --platform=linux/arm64 busybox AS base\nFROM --platform=linux/riscv64 base\n");
    assert_eq!(g.stages[1].platform, platform("linux/arm64"));
}

#[test]
fn copy_from_an_index_reads_that_stage() {
    let g = build("FROM busybox\nRUN a\nFROM scratch\nCOPY --from=0 /a /a\n");
    let s = target(&g);
    assert_eq!(copy_of(&s.steps[0]).from, CopySource::Stage { index: 0 });
    assert_eq!(s.steps[0].needs, indexes(&[0]));
    assert_eq!(s.deps, indexes(&[0]));
    assert_eq!(needed(&g), [true, true]);
}

#[test]
fn copy_from_an_unknown_name_reads_an_image() {
    let g = build("FROM scratch\nCOPY --from=alpine:3 /etc/os-release /\n");
    let s = target(&g);
    assert_eq!(
        copy_of(&s.steps[0]).from,
        CopySource::Image {
            reference: "alpine:3".to_string()
        }
    );
    assert!(s.steps[0].needs.is_empty());
    assert!(s.deps.is_empty());
}

// testOutOfOrderStage
#[test]
fn copy_from_a_later_stage_is_an_error() {
    let e = fail("FROM busybox AS target\nCOPY --from=build /d2 /out\nFROM alpine AS build\nCOPY /Dockerfile /d2\nFROM target\n");
    let text = chain(&e);
    assert!(text.contains("cannot copy from stage"), "{text}");
    assert!(
        text.contains("needs to be defined before current stage"),
        "{text}"
    );
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn copy_from_a_later_stage_index_is_an_error() {
    let e = fail("FROM busybox AS a\nCOPY --from=1 /x /x\nFROM scratch\nFROM a\n");
    assert!(
        chain(&e).contains("cannot copy from stage \"1\""),
        "{}",
        chain(&e)
    );
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn stages_copying_from_each_other_are_a_circular_dependency() {
    let e =
        fail("FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n");
    assert_eq!(e.to_string(), "circular dependency detected on stage: a");
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn copy_from_its_own_stage_is_an_error() {
    let e = fail("FROM busybox AS a\nCOPY --from=a /x /y\n");
    assert!(
        chain(&e).contains("circular dependency detected on stage: a"),
        "{}",
        chain(&e)
    );
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn copy_from_a_variable_is_an_error() {
    let e = fail("ARG S=a\nFROM busybox AS a\nFROM scratch\nCOPY --from=$S /x /x\n");
    assert!(
        chain(&e).contains("variable expansion is not supported for --from"),
        "{}",
        chain(&e)
    );
    assert_eq!(error_line(&e), Some(4));
}

#[test]
fn copy_from_an_index_past_the_last_stage_is_an_error() {
    let e = fail("FROM scratch\nCOPY --from=3 /x /x\n");
    assert!(chain(&e).contains("invalid stage index 3"), "{}", chain(&e));
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn mount_from_a_later_stage_is_an_error() {
    let e = fail(
        "FROM busybox AS first\nRUN --mount=from=later,target=/l true\nFROM busybox AS later\nFROM first\n",
    );
    assert!(
        chain(&e).contains("cannot mount from stage \"later\" to \"/l\""),
        "{}",
        chain(&e)
    );
    assert_eq!(error_line(&e), Some(2));
}

const FOUR_STAGES: &str = "FROM busybox AS deps\nRUN fetch\nFROM busybox AS build\nCOPY --from=deps /a /a\nFROM busybox AS test\nRUN test\nFROM scratch AS runtime\nCOPY --from=build /b /b\n";

#[test]
fn target_picks_a_stage_and_prunes_what_it_does_not_reach() {
    let g = build_with(FOUR_STAGES, &with_target("build"), &Images::default());
    assert_eq!(g.target, 1);
    assert_eq!(needed(&g), [true, true, false, false]);
    let g = build(FOUR_STAGES);
    assert_eq!(g.target, 3);
    assert_eq!(needed(&g), [true, true, false, true]);
    assert!(g.stages[2].steps.is_empty());
}

#[test]
fn unknown_target_suggests_the_nearest_stage() {
    let e = fail_with(FOUR_STAGES, &with_target("bulid"), &Images::default());
    assert_eq!(
        e.to_string(),
        "target stage \"bulid\" could not be found (did you mean build?)"
    );
}

#[test]
fn deps_cover_base_stage_copy_from_and_mount_from() {
    let g = build(
        "FROM busybox AS a\nFROM busybox AS b\nFROM busybox AS c\nFROM a AS d\nCOPY --from=b /x /x\nRUN --mount=type=bind,from=c,target=/c cat /c/x\n",
    );
    let d = target(&g);
    assert_eq!(d.deps, indexes(&[0, 1, 2]));
    assert_eq!(d.steps[0].needs, indexes(&[1]));
    assert_eq!(d.steps[1].needs, indexes(&[2]));
    let mount = &runs(d)[0].mounts[0];
    assert_eq!(mount.kind, MountKind::Bind);
    assert_eq!(mount.from.as_deref(), Some("c"));
    assert_eq!(mount.stage, Some(2));
    assert_eq!(needed(&g), [true, true, true, true]);
}

#[test]
fn mount_from_an_unknown_name_reads_an_image() {
    let g = build("FROM busybox\nRUN --mount=from=alpine:3,target=/a ls /a\n");
    let s = target(&g);
    assert_eq!(runs(s)[0].mounts[0].from.as_deref(), Some("alpine:3"));
    assert_eq!(runs(s)[0].mounts[0].stage, None);
    assert!(s.deps.is_empty());
}

#[test]
fn pruned_stages_resolve_no_base_image() {
    let images = Images::default();
    let g = build_with(
        "FROM unused-image AS a\nRUN a\nFROM used-image\nRUN b\n",
        &opts(),
        &images,
    );
    assert_eq!(needed(&g), [false, true]);
    assert_eq!(
        images.asked(),
        [("used-image".to_string(), "linux/amd64".to_string())]
    );
}

#[test]
fn errors_in_pruned_stages_do_not_fail_the_build() {
    let dockerfile = "FROM busybox AS broken\nENV X=${NOPE:?must_be_set}\nFROM scratch AS ok\n";
    let g = build(dockerfile);
    assert_eq!(needed(&g), [false, true]);
    let e = fail_with(dockerfile, &with_target("broken"), &Images::default());
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn duplicate_stage_names_warn_and_the_later_one_wins() {
    let g = build("FROM busybox AS x\nFROM alpine AS x\nFROM scratch\nCOPY --from=x /a /a\n");
    assert_eq!(
        copy_of(&target(&g).steps[0]).from,
        CopySource::Stage { index: 1 }
    );
    assert_eq!(needed(&g), [false, true, true]);
    let w = &g.warnings[0];
    assert_eq!(
        w.message,
        "Duplicate stage name \"x\", stage names should be unique"
    );
    assert_eq!(w.span.as_ref().map(|s| s.line), Some(2));
}

/// containerd's `platforms.Parse`, which BuildKit and buildx use:
/// `os/arch[/variant]`, or one known OS or architecture; anything else,
/// and a comma list of several, does not parse.
#[test]
fn platform_specifiers_parse_as_containerd_reads_them() {
    let host = Platform::host().architecture;
    for (text, want) in [
        ("linux/amd64", Some("linux/amd64".to_string())),
        ("Linux/X86_64", Some("linux/amd64".to_string())),
        ("linux/arm64/v8", Some("linux/arm64/v8".to_string())),
        ("linux/arm/v7", Some("linux/arm/v7".to_string())),
        ("linux", Some(format!("linux/{host}"))),
        ("arm64", Some("linux/arm64".to_string())),
        ("aarch64", Some("linux/arm64".to_string())),
        ("bogus", None),
        ("linux/amd64,linux/arm64", None),
        ("linux/", None),
        ("/amd64", None),
        ("", None),
        ("linux/arm/v7/extra", None),
    ] {
        assert_eq!(
            Platform::parse(text).ok().map(|p| p.to_string()),
            want,
            "{text}"
        );
    }
    let err = Platform::parse("bogus").expect_err("bogus");
    assert_eq!(
        err.to_string(),
        "\"bogus\": unknown operating system or architecture"
    );
}

/// BuildKit's InvalidBaseImagePlatform check: an image whose OS or
/// architecture is not the stage's is a warning at its FROM line, in
/// BuildKit's words; a variant alone is no mismatch.
#[test]
fn a_base_image_of_another_platform_is_a_warning() {
    let mut images = Images::default()
        .with("arm:1", ImageConfig::default())
        .with("v3:1", ImageConfig::default());
    if let Some(image) = images.images.get_mut("arm:1") {
        image.platform = Some(platform("linux/arm64"));
    }
    if let Some(image) = images.images.get_mut("v3:1") {
        image.platform = Some(platform("linux/amd64/v3"));
    }
    let g = build_with("FROM v3:1\nFROM arm:1\nRUN true\n", &opts(), &images);
    let messages: Vec<(Option<usize>, &str)> = g
        .warnings
        .iter()
        .map(|w| (w.span.as_ref().map(|s| s.line), w.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [(
            Some(2),
            "InvalidBaseImagePlatform: Base image arm:1 was pulled with platform \
             \"linux/arm64\", expected \"linux/amd64\" for current build"
        )]
    );
}

// ---------------------------------------------------------------------------
// ONBUILD

fn onbuild_image(triggers: &[&str]) -> ImageConfig {
    ImageConfig {
        env: strings(&["PATH=/bin"]),
        on_build: strings(triggers),
        ..ImageConfig::default()
    }
}

#[test]
fn base_image_triggers_run_first_in_the_child() {
    let images = Images::default().with(
        "onbuild-base",
        onbuild_image(&["RUN echo trigger", "ENV FROM_TRIGGER=1"]),
    );
    // FROM on line 2, so the triggers' line is the FROM's and not line 1.
    let g = build_with("\nFROM onbuild-base\nRUN echo mine\n", &opts(), &images);
    let s = target(&g);
    let steps: Vec<(bool, usize, &str)> = s
        .steps
        .iter()
        .map(|st| (st.on_build, st.span.line, st.created_by.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (true, 2, "RUN /bin/sh -c echo trigger # buildkit"),
            (true, 2, "ENV FROM_TRIGGER=1"),
            (false, 3, "RUN /bin/sh -c echo mine # buildkit"),
        ]
    );
    assert!(s.config.on_build.is_empty());
    assert_eq!(s.config.env, strings(&["PATH=/bin", "FROM_TRIGGER=1"]));
    assert!(matches!(
        &s.base,
        Base::Image {
            digest: Some(_),
            ..
        }
    ));
}

// testOnBuildInheritedStageRun
#[test]
fn base_image_triggers_do_not_fire_again_in_a_child_stage() {
    let images = Images::default().with("onbuild-base", onbuild_image(&["RUN touch /didrun"]));
    let g = build_with(
        "FROM onbuild-base AS base\nRUN rm /didrun\nFROM base AS child\nRUN test ! -f /didrun\n",
        &opts(),
        &images,
    );
    assert!(g.stages[0].steps[0].on_build);
    assert!(g.stages[1].steps.iter().all(|s| !s.on_build));
    assert_eq!(g.stages[1].steps.len(), 1);
}

#[test]
fn stage_onbuild_is_recorded_and_fires_in_the_child_stage_only() {
    let g = build(
        "FROM busybox AS base\nONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo\nRUN base-step\nFROM base AS mid\nRUN cp /out/foo /out/bar\nFROM mid\nRUN last\n",
    );
    let (base, mid, last) = (&g.stages[0], &g.stages[1], &g.stages[2]);
    assert_eq!(
        base.config.on_build,
        strings(&["RUN mkdir -p /out && echo -n 11 >> /out/foo"])
    );
    assert_eq!(history(base), ["RUN /bin/sh -c base-step # buildkit"]);
    assert!(mid.steps[0].on_build);
    assert_eq!(mid.steps[0].span.line, 4);
    assert_eq!(
        run_of(&mid.steps[0]).args,
        strings(&["/bin/sh", "-c", "mkdir -p /out && echo -n 11 >> /out/foo"])
    );
    assert!(!mid.steps[1].on_build);
    assert!(mid.config.on_build.is_empty());
    assert_eq!(last.steps.len(), 1);
    assert!(!last.steps[0].on_build);
}

#[test]
fn onbuild_copy_from_makes_the_child_need_that_stage() {
    let g = build(
        "FROM alpine AS src\nRUN make-file\nFROM busybox AS base\nONBUILD COPY --from=src /in/file /out/foo\nFROM base AS mid\nRUN cp /out/foo /out/bar\nFROM scratch\nCOPY --from=mid /out/bar /\n",
    );
    let mid = &g.stages[2];
    assert_eq!(mid.deps, indexes(&[0, 1]));
    assert_eq!(copy_of(&mid.steps[0]).from, CopySource::Stage { index: 0 });
    assert_eq!(g.stages[1].deps, BTreeSet::new());
    assert_eq!(needed(&g), [true, true, true, true]);
}

#[test]
fn base_image_trigger_can_copy_from_a_stage_of_the_child() {
    let images = Images::default().with(
        "onbuild-copy",
        onbuild_image(&["COPY --from=inputstage /foo /foo"]),
    );
    let g = build_with(
        "FROM busybox AS inputstage\nRUN echo -n foo > /foo\nFROM onbuild-copy\n",
        &opts(),
        &images,
    );
    assert_eq!(target(&g).deps, indexes(&[0]));
    assert_eq!(needed(&g), [true, true]);
}

#[test]
fn broken_base_image_trigger_fails_at_the_from_line() {
    let images = Images::default().with("bad-onbuild", onbuild_image(&["COPPY a b"]));
    let e = fail_with("FROM busybox\nFROM bad-onbuild\n", &opts(), &images);
    assert_eq!(error_line(&e), Some(2));
    assert!(chain(&e).contains("COPPY"), "{}", chain(&e));
}

// ---------------------------------------------------------------------------
// Where variables are expanded

#[test]
fn copy_expands_sources_dest_chown_and_chmod() {
    let g = build(
        "FROM scratch\nARG U=1 SRC=a DST=/dst MODE=755\nCOPY --chown=$U:$U --chmod=$MODE $SRC b ${DST}/\n",
    );
    let step = &target(&g).steps[1];
    let copy = copy_of(step);
    assert_eq!(copy.sources, strings(&["a", "b"]));
    assert_eq!(copy.dest, "/dst/");
    assert_eq!(copy.chown.as_deref(), Some("1:1"));
    assert_eq!(copy.chmod.as_deref(), Some("755"));
    assert_eq!(
        step.created_by,
        "COPY --chown=1:1 --chmod=755 a b /dst/ # buildkit"
    );
}

#[test]
fn add_expands_sources_and_checksum() {
    let g = build(
        "FROM scratch\nARG SUM=sha256:abc URL=https://example.com/f.tar\nADD --checksum=$SUM $URL /x\n",
    );
    let step = &target(&g).steps[1];
    let add = copy_of(step);
    assert!(add.add);
    assert_eq!(add.sources, strings(&["https://example.com/f.tar"]));
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert_eq!(
        step.created_by,
        "ADD https://example.com/f.tar /x # buildkit"
    );
}

#[test]
fn copy_dest_is_relative_to_workdir() {
    let g = build("FROM scratch\nWORKDIR /app\nCOPY a .\nCOPY b sub/\nCOPY c ../etc/c\n");
    let dests: Vec<&str> = target(&g).steps[1..]
        .iter()
        .map(|s| copy_of(s).dest.as_str())
        .collect();
    assert_eq!(dests, ["/app/", "/app/sub/", "/etc/c"]);
    assert_eq!(target(&g).steps[1].created_by, "COPY a . # buildkit");
}

#[test]
fn workdir_user_volume_stopsignal_and_label_expand() {
    let g = build(
        "FROM scratch\nENV D=/srv U=nobody SIG=SIGINT K=version V=1.0\nWORKDIR $D\nUSER $U\nVOLUME $D/data\nSTOPSIGNAL $SIG\nLABEL $K=$V \"other\"=\"x y\"\n",
    );
    let c = &target(&g).config;
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(c.user, "nobody");
    assert_eq!(c.volumes, set(&["/srv/data"]));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    let labels: Vec<(&str, &str)> = c
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("other", "x y"), ("version", "1.0")]);
    assert_eq!(history(target(&g))[5], "LABEL version=1.0 other=x y");
}

// testExposeExpansion
#[test]
fn expose_splits_an_expanded_value_into_ports() {
    let g = build("FROM scratch\nARG PORTS=\"3000 4000/udp\"\nEXPOSE $PORTS\nEXPOSE 5000\n");
    let s = target(&g);
    assert_eq!(
        s.config.exposed_ports,
        set(&["3000/tcp", "4000/udp", "5000/tcp"])
    );
    assert_eq!(
        history(s)[1..],
        ["EXPOSE [3000/tcp 4000/udp]", "EXPOSE [5000/tcp]"]
    );
}

#[test]
fn run_mount_values_expand() {
    let g = build(
        "FROM busybox\nARG CACHE=/root/.cache ID=pip\nRUN --mount=type=cache,target=$CACHE,id=${ID} pip install x\n",
    );
    let mount = &runs(target(&g))[0].mounts[0];
    assert_eq!(mount.kind, MountKind::Cache);
    assert_eq!(mount.target.as_deref(), Some("/root/.cache"));
    assert_eq!(mount.id.as_deref(), Some("pip"));
}

#[test]
fn commands_are_left_for_the_shell_to_expand() {
    let g = build(
        "FROM busybox\nENV X=1\nRUN echo $X\nCMD echo $X\nENTRYPOINT [\"run\", \"$X\"]\nHEALTHCHECK CMD check $X\nSHELL [\"/bin/sh\", \"-c\", \"$X\"]\n",
    );
    let s = target(&g);
    assert_eq!(runs(s)[0].args, strings(&["/bin/sh", "-c", "echo $X"]));
    assert_eq!(s.config.cmd, Some(strings(&["/bin/sh", "-c", "echo $X"])));
    assert_eq!(s.config.entrypoint, Some(strings(&["run", "$X"])));
    let hc = s.config.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(hc.test, strings(&["CMD-SHELL", "check $X"]));
    assert_eq!(s.config.shell, Some(strings(&["/bin/sh", "-c", "$X"])));
}

// testHeredocVarSubstitution
#[test]
fn copy_heredoc_expands_only_with_an_unquoted_delimiter() {
    let g = build(
        "FROM busybox\nARG name=world\nCOPY <<EOF /dest/c1\nHello ${name}!\nEOF\nCOPY <<'EOF' /dest/c2\nHello ${name}!\nEOF\nCOPY <<\"EOF\" /dest/c3\nHello ${name}!\nEOF\nCOPY <<EOF /dest/q1\nHello '${name}'!\nEOF\nCOPY <<EOF /dest/q2\nHello \"${name}\"!\nEOF\nCOPY <<'EOF' /dest/qsingle2\nHello \"${name}\"!\nEOF\n",
    );
    let bodies: Vec<&str> = target(&g).steps[1..]
        .iter()
        .map(|s| copy_of(s).contents[0].data.as_str())
        .collect();
    assert_eq!(
        bodies,
        [
            "Hello world!\n",
            "Hello ${name}!\n",
            "Hello ${name}!\n",
            "Hello 'world'!\n",
            "Hello \"world\"!\n",
            "Hello \"${name}\"!\n",
        ]
    );
    assert_eq!(
        target(&g).steps[1].created_by,
        "COPY <<EOF /dest/c1 # buildkit"
    );
}

// testCopyHeredocSpecialSymbols
#[test]
fn copy_heredoc_backslashes_are_escapes_only_when_expanded() {
    let g = build(
        "FROM scratch\nCOPY <<EOF slashfile1\n\\\nEOF\nCOPY <<EOF slashfile2\n\\\\\nEOF\nCOPY <<EOF slashfile3\n\\$\nEOF\nCOPY <<\"EOF\" rawslashfile1\n\\\nEOF\nCOPY <<\"EOF\" rawslashfile2\n\\\\\nEOF\nCOPY <<\"EOF\" rawslashfile3\n\\$\nEOF\nCOPY <<EOF quotefile\n\"quotes in file\"\nEOF\n",
    );
    let bodies: Vec<&str> = target(&g)
        .steps
        .iter()
        .map(|s| copy_of(s).contents[0].data.as_str())
        .collect();
    assert_eq!(
        bodies,
        [
            "\n",
            "\\\n",
            "$\n",
            "\\\n",
            "\\\\\n",
            "\\$\n",
            "\"quotes in file\"\n"
        ]
    );
}

// ---------------------------------------------------------------------------
// The image config

#[test]
fn scratch_gets_the_default_path() {
    let g = build("FROM scratch\n");
    assert_eq!(target(&g).config.env, strings(&[DEFAULT_PATH]));
}

#[test]
fn base_image_env_keeps_its_own_path() {
    let images = Images::default()
        .with(
            "with-path",
            ImageConfig {
                env: strings(&["PATH=/custom", "A=1"]),
                ..ImageConfig::default()
            },
        )
        .with(
            "without-path",
            ImageConfig {
                env: strings(&["A=1"]),
                ..ImageConfig::default()
            },
        );
    let g = build_with("FROM with-path\n", &opts(), &images);
    assert_eq!(target(&g).config.env, strings(&["PATH=/custom", "A=1"]));
    let g = build_with("FROM without-path\n", &opts(), &images);
    assert_eq!(target(&g).config.env, strings(&["A=1", DEFAULT_PATH]));
}

#[test]
fn base_image_env_workdir_and_user_reach_run() {
    let images = Images::default().with(
        "app-base",
        ImageConfig {
            env: strings(&["PATH=/bin", "HOME=/root"]),
            working_dir: "/srv".to_string(),
            user: "app".to_string(),
            ..ImageConfig::default()
        },
    );
    let g = build_with("FROM app-base\nRUN pwd\nWORKDIR data\n", &opts(), &images);
    let s = target(&g);
    let run = runs(s)[0];
    assert_eq!(run.env, strings(&["PATH=/bin", "HOME=/root"]));
    assert_eq!(run.workdir, "/srv");
    assert_eq!(run.user, "app");
    assert_eq!(s.config.working_dir, "/srv/data");
    assert_eq!(
        s.steps[1].op,
        Op::Workdir {
            path: "/srv/data".to_string(),
            user: "app".to_string()
        }
    );
}

#[test]
fn cmd_shell_form_runs_through_the_stage_shell() {
    let g = build("FROM scratch\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n");
    let s = target(&g);
    assert_eq!(s.config.cmd, Some(strings(&["/bin/bash", "-c", "echo hi"])));
    assert!(s.config.args_escaped);
    assert_eq!(s.config.shell, Some(strings(&["/bin/bash", "-c"])));
    assert_eq!(
        history(s),
        [
            "SHELL [/bin/bash -c]",
            "CMD [\"/bin/bash\" \"-c\" \"echo hi\"]"
        ]
    );
}

#[test]
fn cmd_exec_form_is_kept_as_written() {
    let g = build("FROM scratch\nCMD [\"/app\", \"--port\", \"80\"]\n");
    let s = target(&g);
    assert_eq!(s.config.cmd, Some(strings(&["/app", "--port", "80"])));
    assert_eq!(history(s), ["CMD [\"/app\" \"--port\" \"80\"]"]);
}

#[test]
fn args_escaped_is_set_only_by_cmd() {
    let g = build("FROM scratch\nENTRYPOINT [\"/app\"]\n");
    assert!(!target(&g).config.args_escaped);
}

// testCmdShell
#[test]
fn entrypoint_resets_a_cmd_inherited_from_the_base_image() {
    let images = Images::default().with(
        "cmd-base",
        ImageConfig {
            cmd: Some(strings(&["test"])),
            ..ImageConfig::default()
        },
    );
    let g = build_with(
        "FROM cmd-base\nSHELL [\"ls\"]\nENTRYPOINT my entrypoint\n",
        &opts(),
        &images,
    );
    let c = &target(&g).config;
    assert_eq!(c.cmd, None);
    assert_eq!(c.entrypoint, Some(strings(&["ls", "my entrypoint"])));
}

#[test]
fn entrypoint_resets_a_cmd_inherited_from_a_base_stage() {
    let g = build("FROM scratch AS base\nCMD [\"--help\"]\nFROM base\nENTRYPOINT [\"/app\"]\n");
    assert_eq!(g.stages[0].config.cmd, Some(strings(&["--help"])));
    assert_eq!(target(&g).config.cmd, None);
}

#[test]
fn entrypoint_keeps_a_cmd_set_in_the_same_stage() {
    let g = build("FROM scratch\nCMD [\"--help\"]\nENTRYPOINT [\"/app\"]\n");
    let c = &target(&g).config;
    assert_eq!(c.cmd, Some(strings(&["--help"])));
    assert_eq!(c.entrypoint, Some(strings(&["/app"])));
}

#[test]
fn entrypoint_shell_form_runs_through_the_default_shell() {
    let g = build("FROM scratch\nENTRYPOINT foo bar\n");
    let s = target(&g);
    assert_eq!(
        s.config.entrypoint,
        Some(strings(&["/bin/sh", "-c", "foo bar"]))
    );
    assert_eq!(history(s), ["ENTRYPOINT [\"/bin/sh\" \"-c\" \"foo bar\"]"]);
}

#[test]
fn exposed_ports_accumulate_with_protocols_and_ranges() {
    let g = build("FROM scratch\nEXPOSE 80\nEXPOSE 53/udp 8000-8001/TCP\n");
    let s = target(&g);
    assert_eq!(
        s.config.exposed_ports,
        set(&["53/udp", "80/tcp", "8000/tcp", "8001/tcp"])
    );
    assert_eq!(
        history(s),
        ["EXPOSE [80/tcp]", "EXPOSE [53/udp 8000/tcp 8001/tcp]"]
    );
}

#[test]
fn volumes_in_json_and_shell_form() {
    let g = build("FROM scratch\nVOLUME [\"/data\", \"/logs\"]\nVOLUME /a /b\n");
    let s = target(&g);
    assert_eq!(s.config.volumes, set(&["/a", "/b", "/data", "/logs"]));
    assert_eq!(history(s), ["VOLUME [/data /logs]", "VOLUME [/a /b]"]);
}

#[test]
fn workdir_resolves_relative_paths_against_the_current_one() {
    let g = build("FROM scratch\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nWORKDIR /\n");
    let s = target(&g);
    assert_eq!(s.config.working_dir, "/");
    let steps: Vec<(&str, bool)> = s
        .steps
        .iter()
        .map(|st| (st.created_by.as_str(), st.layer))
        .collect();
    assert_eq!(
        steps,
        [
            ("WORKDIR /a", true),
            ("WORKDIR /a/b", true),
            ("WORKDIR /a/c", true),
            ("WORKDIR /", false)
        ]
    );
}

// testLabels
#[test]
fn cli_labels_go_on_the_target_only() {
    let mut o = opts();
    o.labels.insert("bar".to_string(), "baz".to_string());
    let g = build_with(
        "FROM scratch AS a\nLABEL foo=bar\nFROM a\n",
        &o,
        &Images::default(),
    );
    let labels =
        |s: &Stage| -> Vec<(String, String)> { s.config.labels.clone().into_iter().collect() };
    assert_eq!(
        labels(target(&g)),
        [
            ("bar".to_string(), "baz".to_string()),
            ("foo".to_string(), "bar".to_string())
        ]
    );
    assert_eq!(
        labels(&g.stages[0]),
        [("foo".to_string(), "bar".to_string())]
    );
}

#[test]
fn healthcheck_shell_form_with_durations() {
    let g = build(
        "FROM scratch\nHEALTHCHECK --interval=5s --timeout=3s --start-period=1m --start-interval=100ms --retries=3 CMD curl -f http://localhost/ || exit 1\n",
    );
    let s = target(&g);
    assert_eq!(
        s.config.healthcheck,
        Some(Healthcheck {
            test: strings(&["CMD-SHELL", "curl -f http://localhost/ || exit 1"]),
            interval: 5_000_000_000,
            timeout: 3_000_000_000,
            start_period: 60_000_000_000,
            start_interval: 100_000_000,
            retries: 3,
        })
    );
    assert_eq!(
        history(s),
        ["HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:5s Timeout:3s StartPeriod:1m0s StartInterval:100ms Retries:3}"]
    );
}

#[test]
fn healthcheck_exec_form_and_none() {
    let g = build("FROM scratch\nHEALTHCHECK CMD [\"/check\", \"-q\"]\n");
    let hc = target(&g).config.healthcheck.clone().expect("healthcheck");
    assert_eq!(hc.test, strings(&["CMD", "/check", "-q"]));
    assert_eq!((hc.interval, hc.retries), (0, 0));
    let g = build("FROM scratch\nHEALTHCHECK CMD [\"/check\"]\nHEALTHCHECK NONE\n");
    let s = target(&g);
    assert_eq!(
        s.config.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(strings(&["NONE"]))
    );
    assert_eq!(
        history(s)[1],
        "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"
    );
}

#[test]
fn user_stopsignal_and_maintainer() {
    let g = build(
        "FROM scratch\nUSER 1000:1000\nSTOPSIGNAL SIGKILL\nMAINTAINER Jane <jane@example.com>\n",
    );
    let s = target(&g);
    assert_eq!(s.config.user, "1000:1000");
    assert_eq!(s.config.stop_signal.as_deref(), Some("SIGKILL"));
    assert_eq!(s.author.as_deref(), Some("Jane <jane@example.com>"));
    assert_eq!(
        history(s),
        [
            "USER 1000:1000",
            "STOPSIGNAL SIGKILL",
            "MAINTAINER Jane <jane@example.com>"
        ]
    );
}

#[test]
fn bad_stopsignal_fails_at_its_line() {
    let e = fail("FROM scratch\nSTOPSIGNAL SIGFOO\n");
    assert_eq!(error_line(&e), Some(2));
}

// ---------------------------------------------------------------------------
// History lines and layers

#[test]
fn history_lines_and_layers_match_buildkit() {
    let g = build(
        "FROM busybox\nARG A=b\nENV a=b\nLABEL k=v\nWORKDIR /app\nWORKDIR /\nUSER nobody\nEXPOSE 80\nVOLUME /data\nSTOPSIGNAL SIGKILL\nSHELL [\"/bin/bash\", \"-c\"]\nRUN echo hi\nCOPY --chown=1:1 a b /dst\nADD x.tar /\nCMD x\nENTRYPOINT [\"/e\"]\nMAINTAINER me\nHEALTHCHECK NONE\nONBUILD RUN x\n",
    );
    let lines: Vec<(&str, bool)> = target(&g)
        .steps
        .iter()
        .map(|s| (s.created_by.as_str(), s.layer))
        .collect();
    assert_eq!(
        lines,
        [
            ("ARG A=b", false),
            ("ENV a=b", false),
            ("LABEL k=v", false),
            ("WORKDIR /app", true),
            ("WORKDIR /", false),
            ("USER nobody", false),
            ("EXPOSE [80/tcp]", false),
            ("VOLUME [/data]", false),
            ("STOPSIGNAL SIGKILL", false),
            ("SHELL [/bin/bash -c]", false),
            ("RUN |1 A=b /bin/bash -c echo hi # buildkit", true),
            ("COPY --chown=1:1 a b /dst # buildkit", true),
            ("ADD x.tar / # buildkit", true),
            ("CMD [\"/bin/bash\" \"-c\" \"x\"]", false),
            ("ENTRYPOINT [\"/e\"]", false),
            ("MAINTAINER me", false),
            (
                "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}",
                false
            ),
        ]
    );
}

#[test]
fn run_history_with_an_arg_and_the_default_shell() {
    let g = build("FROM busybox\nARG A=b\nRUN echo hi\nRUN [\"ls\", \"-l\"]\n");
    assert_eq!(
        history(target(&g))[1..],
        [
            "RUN |1 A=b /bin/sh -c echo hi # buildkit",
            "RUN |1 A=b ls -l # buildkit"
        ]
    );
}

#[test]
fn copy_history_keeps_parents_but_not_from_or_link() {
    let g = build(
        "FROM busybox AS a\nFROM scratch\nCOPY --from=a --link --parents --chmod=644 /x/./y /z/\n",
    );
    assert_eq!(
        history(target(&g)),
        ["COPY --parents --chmod=644 /x/./y /z/ # buildkit"]
    );
}

// ---------------------------------------------------------------------------
// RUN heredocs

#[test]
fn run_heredoc_body_becomes_the_shell_command() {
    let g = build("FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\n");
    let s = target(&g);
    assert_eq!(
        runs(s)[0].args,
        strings(&["/bin/sh", "-c", "echo a\necho b\n"])
    );
    assert!(runs(s)[0].files.is_empty());
    assert_eq!(s.steps[0].span.end_line, 5);
}

#[test]
fn run_heredoc_with_a_shebang_runs_as_a_file_under_dev_pipes() {
    let g = build("FROM busybox\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
    let run = runs(target(&g))[0];
    assert_eq!(run.args, strings(&["/bin/sh", "-c", "/dev/pipes/EOF"]));
    let files: Vec<(&str, &str)> = run
        .files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        files,
        [("/dev/pipes/EOF", "#!/usr/bin/env python3\nprint(1)\n")]
    );
}

#[test]
fn run_heredoc_feeding_a_command_is_left_to_the_shell() {
    let g = build("FROM busybox\nRUN cat <<EOF > /x\nhello $HOME\nEOF\n");
    let run = runs(target(&g))[0];
    assert_eq!(
        run.args,
        strings(&["/bin/sh", "-c", "cat <<EOF > /x\nhello $HOME\nEOF"])
    );
}

#[test]
fn run_heredoc_with_dash_strips_leading_tabs() {
    let g = build("FROM busybox\nRUN <<-EOF\n\techo a\n\t\techo b\nEOF\n");
    assert_eq!(runs(target(&g))[0].args[2], "echo a\necho b\n");
}

// ---------------------------------------------------------------------------
// Errors point at their line

#[test]
fn unknown_instruction_suggests_the_nearest() {
    let e = fail("FROM busybox\nWORKDIR /app\nCOPPY . .\n");
    assert_eq!(
        e.to_string(),
        "unknown instruction: COPPY (did you mean COPY?)"
    );
    assert_eq!(error_line(&e), Some(3));
}

#[test]
fn unknown_flag_suggests_the_nearest() {
    let e = fail("FROM busybox\nCOPY --chwon=1:1 a /b\n");
    assert_eq!(
        e.to_string(),
        "unknown flag: --chwon for COPY (did you mean --chown?)"
    );
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn bad_stage_name_is_rejected() {
    let e = fail("FROM busybox\nFROM busybox AS 1st\n");
    assert!(
        e.to_string()
            .contains("invalid name for build stage: \"1st\""),
        "{e}"
    );
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn instruction_before_from_is_rejected() {
    let e = fail("ARG A\nRUN echo\nFROM busybox\n");
    assert_eq!(error_line(&e), Some(2));
}

// testEmptyStages
#[test]
fn dockerfile_without_from_is_rejected() {
    let e = fail("ARG foo=bar\n");
    assert!(e.to_string().contains("no FROM"), "{e}");
    assert_eq!(error_line(&e), None);
}

#[test]
fn unterminated_quote_in_env_is_rejected_at_its_line() {
    let e = fail("FROM busybox\nENV a=1\nENV b=\"oops\n");
    assert_eq!(error_line(&e), Some(3));
}

// errors_test.go: invalidenv
#[test]
fn env_without_arguments_is_rejected_at_its_line() {
    let e = fail("from alpine\nenv\n");
    assert_eq!(error_line(&e), Some(2));
}

#[test]
fn blank_base_name_is_rejected() {
    let e = fail("ARG IMG\nFROM $IMG\n");
    assert_eq!(e.to_string(), "base name ($IMG) should not be blank");
    assert_eq!(error_line(&e), Some(2));
}

// testAddInvalidChmod
#[test]
fn chmod_must_be_octal_up_to_07777_or_symbolic() {
    for mode in ["64a", "10000"] {
        let e = fail(&format!("FROM scratch\nADD --chmod={mode} foo /\n"));
        assert_eq!(
            e.to_string(),
            format!("invalid chmod parameter: '{mode}'. it should be octal string and between 0 and 07777")
        );
        assert_eq!(error_line(&e), Some(2));
    }
    let g = build("FROM scratch\nARG M=u+x\nCOPY --chmod=$M run.sh /\n");
    assert_eq!(copy_of(&target(&g).steps[1]).chmod.as_deref(), Some("u+x"));
}

/// A resolver's error (a registry that refuses) fails the plan at the FROM
/// line that named the image, with the resolver's reason as the cause.
#[test]
fn a_base_image_the_resolver_cannot_look_up_fails_at_its_from_line() {
    let images = Images::default().refusing("private/app:1", "not authorized: log in");
    let err = plan(
        "FROM scratch AS a\nRUN true\n\nFROM private/app:1\nRUN true\n",
        &opts(),
        &images,
    )
    .expect_err("the resolver refused");
    let text = format!("{err}");
    assert!(text.contains("cannot resolve private/app:1"), "{text}");
    assert_eq!(err.span().map(|s| s.line), Some(4), "{text}");
    let mut chain = text.clone();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(chain.contains("not authorized: log in"), "{chain}");
}
