//! One test per rule: a Dockerfile that breaks it (cases and messages from
//! moby/buildkit frontend/dockerfile/dockerfile_check_test.go) and one that
//! does not; then the directives.

use super::*;
use crate::plan::{BaseImage, NoImages, ResolveError};

/// Base images with an ENV, as a store would answer.
struct Images;

impl BaseResolver for Images {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<Option<BaseImage>, ResolveError> {
        Ok(match reference {
            "alpine" | "busybox" => Some(BaseImage {
                config: crate::ImageConfig {
                    env: vec!["PATH=/usr/bin:/bin".to_string(), "HOME=/root".to_string()],
                    ..Default::default()
                },
                ..Default::default()
            }),
            _ => None,
        })
    }
}

fn run(text: &str, build_args: &[(&str, &str)], ignore: Option<&Matcher>) -> Vec<String> {
    let mut plan = PlanOptions::new("Dockerfile");
    plan.platform = Platform::parse("linux/amd64").expect("platform");
    plan.build_platform = plan.platform.clone();
    for (k, v) in build_args {
        plan.build_args.insert(k.to_string(), v.to_string());
    }
    let opts = CheckOptions {
        plan: &plan,
        ignore,
        stages: None,
    };
    let report = check(text, &opts, &Images).expect("the Dockerfile parses");
    report.findings.iter().map(Finding::short).collect()
}

fn lint(text: &str) -> Vec<String> {
    run(text, &[], None)
}

#[track_caller]
fn clean(text: &str) {
    assert_eq!(lint(text), Vec::<String>::new(), "{text}");
}

#[test]
fn stage_name_casing() {
    assert_eq!(
        lint("FROM scratch AS BadStageName\n"),
        ["StageNameCasing: Stage name 'BadStageName' should be lowercase (line 1)"]
    );
    clean("FROM scratch AS base\n");
}

#[test]
fn from_as_casing() {
    assert_eq!(
        lint("\nFROM scratch as base2\n"),
        ["FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"]
    );
    assert_eq!(
        lint("from scratch AS base\nfrom scratch as base2\n"),
        ["FromAsCasing: 'AS' and 'from' keywords' casing do not match (line 1)"]
    );
    clean("FROM scratch AS base\nFROM scratch\n");
    clean("from scratch as b\n");
}

#[test]
fn consistent_instruction_casing() {
    assert_eq!(
        lint("From scratch as base\nFROM scratch AS base2\n"),
        ["ConsistentInstructionCasing: Command 'From' should match the case of the command majority (uppercase) (line 1)"]
    );
    assert_eq!(
        lint("FROM scratch\ncopy a /foo\nCOPY a /bar\n"),
        ["ConsistentInstructionCasing: Command 'copy' should match the case of the command majority (uppercase) (line 2)"]
    );
    assert_eq!(
        lint("FROM scratch\ncopy a /foo\ncopy a /bar\ncopy a /baz\n"),
        ["ConsistentInstructionCasing: Command 'FROM' should match the case of the command majority (lowercase) (line 1)"]
    );
    clean("from scratch\ncopy a /foo\n");
}

#[test]
fn duplicate_stage_name() {
    assert_eq!(
        lint("FROM scratch AS b\nFROM scratch AS b\n"),
        ["DuplicateStageName: Duplicate stage name \"b\", stage names should be unique (line 2)"]
    );
    clean("FROM scratch AS b1\nFROM scratch AS b2\n");
}

#[test]
fn reserved_stage_name() {
    assert_eq!(
        lint("FROM scratch AS scratch\nFROM scratch AS context\n"),
        [
            "ReservedStageName: Stage name should not use the same name as reserved stage \"scratch\" (line 1)",
            "ReservedStageName: Stage name should not use the same name as reserved stage \"context\" (line 2)",
        ]
    );
    clean("FROM scratch\nFROM scratch AS a\n");
}

#[test]
fn json_args_recommended() {
    assert_eq!(
        lint("FROM scratch\nCMD mycommand\n"),
        ["JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)"]
    );
    assert_eq!(
        lint("FROM scratch\nENTRYPOINT mycommand\n"),
        ["JSONArgsRecommended: JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals (line 2)"]
    );
    clean("FROM scratch\nCMD [\"mycommand\"]\n");
    clean("FROM scratch AS base\nSHELL [\"/usr/bin/customshell\"]\n\nFROM base\nCMD mycommand\n");
}

#[test]
fn maintainer_deprecated() {
    assert_eq!(
        lint("FROM scratch\nMAINTAINER me@example.org\n"),
        ["MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)"]
    );
    clean("FROM scratch\nLABEL org.opencontainers.image.authors=\"me@example.org\"\n");
}

#[test]
fn undefined_arg_in_from() {
    assert_eq!(
        lint("FROM --platform=$BULIDPLATFORM scratch\n"),
        ["UndefinedArgInFrom: FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?) (line 1)"]
    );
    assert_eq!(
        lint("ARG tag=latest\nFROM busybox:${tag}${version} AS b\n"),
        ["UndefinedArgInFrom: FROM argument 'version' is not declared (line 2)"]
    );
    clean("ARG base=scratch\nFROM $base\n");
    clean("FROM --platform=$BUILDPLATFORM scratch\n");
    clean("ARG DEBUG\nFROM scratch${DEBUG}\n");
}

#[test]
fn workdir_relative_path() {
    assert_eq!(
        lint("FROM scratch\nWORKDIR app/\n"),
        ["WorkdirRelativePath: Relative workdir \"app/\" can have unexpected results if the base image changes (line 2)"]
    );
    clean("FROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n");
}

#[test]
fn undefined_var() {
    assert_eq!(
        lint("FROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n"),
        ["UndefinedVar: Usage of undefined variable '$foo' (line 2)"]
    );
    assert_eq!(
        lint("FROM alpine\nARG DIR_ASSETS=assets/\nCOPY $DIR_ASSET .\n"),
        ["UndefinedVar: Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?) (line 3)"]
    );
    assert_eq!(
        lint("FROM alpine\nENV PATH=$PAHT:/tmp/bin\n"),
        ["UndefinedVar: Usage of undefined variable '$PAHT' (did you mean $PATH?) (line 2)"]
    );
    clean("FROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n");
    clean("FROM alpine AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n");
    clean("FROM alpine\nENV PATH=$PATH:/x HOME=$HOME/y\n");
    // An image nothing knows: its variables are unknown, so nothing is said.
    clean("FROM unknown\nENV GOPATH=$GOPATH/x\n");
}

#[test]
fn multiple_instructions_disallowed() {
    let text = "FROM scratch\nENTRYPOINT [\"/a\"]\nENTRYPOINT [\"/b\"]\nCMD [\"/a\"]\nCMD [\"/b\"]\nHEALTHCHECK CMD [\"/a\"]\nHEALTHCHECK CMD [\"/b\"]\n";
    let m = |name: &str, line: usize| {
        format!("MultipleInstructionsDisallowed: Multiple {name} instructions should not be used in the same stage because only the last one will be used (line {line})")
    };
    assert_eq!(
        lint(text),
        [m("ENTRYPOINT", 2), m("CMD", 4), m("HEALTHCHECK", 6)]
    );
    clean("FROM scratch AS a\nCMD [\"/a\"]\n\nFROM a AS b\nCMD [\"/b\"]\n");
}

#[test]
fn legacy_key_value_format() {
    assert_eq!(
        lint("FROM scratch\nENV testkey value\nLABEL key value\n"),
        [
            "LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 2)",
            "LegacyKeyValueFormat: \"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format (line 3)",
        ]
    );
    clean("FROM scratch\nENV testkey=value\nLABEL key=value\n");
}

#[test]
fn invalid_default_arg_in_from() {
    assert_eq!(
        run("ARG VERSION\nFROM busybox:$VERSION\n", &[("VERSION", "latest")], None),
        ["InvalidDefaultArgInFrom: Default value for ARG busybox:$VERSION results in empty or invalid base image name (line 2)"]
    );
    assert_eq!(
        run("ARG IMAGE\nFROM $IMAGE\n", &[("IMAGE", "busybox:latest")], None),
        ["InvalidDefaultArgInFrom: Default value for ARG $IMAGE results in empty or invalid base image name (line 2)"]
    );
    clean("ARG VERSION=\"latest\"\nFROM busybox:${VERSION}\n");
    clean("ARG BUSYBOX_VARIANT=\"\"\nFROM busybox:stable${BUSYBOX_VARIANT}\n");
}

#[test]
fn from_platform_flag_const_disallowed() {
    assert_eq!(
        lint("FROM --platform=linux/amd64 scratch\n"),
        ["FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"linux/amd64\" (line 1)"]
    );
    clean("FROM --platform=linux/amd64 scratch AS my_amd64_stage\n");
    clean("FROM --platform=linux/amd64 scratch AS linux\n");
    clean("FROM --platform=$BUILDPLATFORM scratch\n");
}

#[test]
fn copy_ignored_file() {
    let ignore = Matcher::new(&["Dockerfile"]).expect("patterns");
    let text = "FROM scratch\nCOPY Dockerfile .\nADD ./Dockerfile /windy\n";
    assert_eq!(
        run(text, &[], Some(&ignore)),
        [
            "CopyIgnoredFile: Attempting to Copy file \"Dockerfile\" that is excluded by .dockerignore (line 2)",
            "CopyIgnoredFile: Attempting to Add file \"Dockerfile\" that is excluded by .dockerignore (line 3)",
        ]
    );
    let text = "FROM scratch AS base\nCOPY a /Dockerfile\nFROM base\nCOPY --from=base /Dockerfile /x\nCOPY . .\n";
    assert_eq!(run(text, &[], Some(&ignore)), Vec::<String>::new());
    let with_exception = Matcher::new(&["**", "!Dockerfile"]).expect("patterns");
    assert_eq!(
        run("FROM scratch\nCOPY x .\n", &[], Some(&with_exception)),
        Vec::<String>::new()
    );
    let everything = Matcher::new(&["*"]).expect("patterns");
    assert_eq!(
        run("FROM scratch\nCOPY . .\n", &[], Some(&everything)),
        ["CopyIgnoredFile: Attempting to Copy file \".\" that is excluded by .dockerignore (line 2)"]
    );
}

#[test]
fn secrets_used_in_arg_or_env() {
    let text = "FROM scratch\nARG SECRET_PASSPHRASE\nENV password=bar secret=baz\nENV PUBLIC_KEY=\nARG AUTH_MODULE_VERSION\n";
    assert_eq!(
        lint(text),
        [
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"SECRET_PASSPHRASE\") (line 2)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"password\") (line 3)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"secret\") (line 3)",
        ]
    );
    clean("FROM scratch\nENV sunflower=foo\n");
}

#[test]
fn invalid_definition_description_is_experimental() {
    let text = "# bar this is the bar\nARG foo=bar\n# BasE this is the BasE image\nFROM scratch AS base\n# definitely a bad comment\nARG foo=baz bar=qux\n";
    assert_eq!(lint(text), Vec::<String>::new());
    let text = format!("# check=experimental=InvalidDefinitionDescription\n{text}");
    assert_eq!(
        lint(&text),
        [
            "InvalidDefinitionDescription: Comment for ARG should follow the format: `# foo <description>` (line 3)",
            "InvalidDefinitionDescription: Comment for FROM should follow the format: `# base <description>` (line 5)",
            "InvalidDefinitionDescription: Comment for ARG should follow the format: `# <arg_key> <description>` (line 7)",
        ]
    );
    clean("# check=experimental=InvalidDefinitionDescription\n# foo the foo\nARG foo=bar\n# base the base\nFROM scratch AS base\n#\nARG bit=bat\n");
}

#[test]
fn expose_proto_casing() {
    assert_eq!(
        lint("FROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n"),
        [
            "ExposeProtoCasing: Defined protocol '80/TcP' in EXPOSE instruction should be lowercase (line 2)",
            "ExposeProtoCasing: Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase (line 2)",
        ]
    );
    clean("FROM scratch\nEXPOSE 80/tcp 53/udp 8000\n");
}

#[test]
fn expose_invalid_format() {
    // EXPOSE sorts its words (BuildKit `parseExpose`), so the findings come
    // in that order.
    let m = |p: &str| {
        format!("ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '{p}' (line 2)")
    };
    assert_eq!(
        lint("FROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n"),
        [m("127.0.0.1:80:80"), m("5000:5000"), m("[::1]:8080:8080")]
    );
    clean("FROM scratch\nEXPOSE 8000 9000-9010/udp\n");
}

#[test]
fn skip_directives_and_comments() {
    let text = "FROM scratch as base\ncopy Dockerfile .\n";
    assert_eq!(
        lint(&format!("#check=skip=all\n{text}")),
        Vec::<String>::new()
    );
    assert_eq!(
        lint(&format!("#check=skip=ConsistentInstructionCasing\n{text}")),
        ["FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"]
    );
    assert_eq!(
        lint(&format!(
            "#check=skip=ConsistentInstructionCasing,FromAsCasing\n{text}"
        )),
        Vec::<String>::new()
    );
    // A comment above an instruction skips for that instruction only.
    let text = "FROM scratch\n# check=skip=SecretsUsedInArgOrEnv // allowed here\nENV password=bar\nENV token=x\n";
    assert_eq!(
        lint(text),
        ["SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"token\") (line 4)"]
    );
}

#[test]
fn the_build_arg_replaces_the_directive() {
    let text = "#check=skip=all\nFROM scratch as base\ncopy Dockerfile .\n";
    let arg = [(
        CHECK_BUILD_ARG,
        "skip=ConsistentInstructionCasing;error=true",
    )];
    let mut plan = PlanOptions::new("Dockerfile");
    plan.build_args
        .extend(arg.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let opts = CheckOptions {
        plan: &plan,
        ignore: None,
        stages: None,
    };
    let report = check(text, &opts, &NoImages).expect("parses");
    assert_eq!(
        report.violation().as_deref(),
        Some("lint violation found for rules: FromAsCasing")
    );
    let report = check(
        "#check=error=true\nFROM scratch as base\n",
        &opts,
        &NoImages,
    )
    .expect("parses");
    assert_eq!(
        report.violation().as_deref(),
        Some("lint violation found for rules: FromAsCasing")
    );
    plan.build_args
        .insert(CHECK_BUILD_ARG.to_string(), "skip=all".to_string());
    let opts = CheckOptions {
        plan: &plan,
        ignore: None,
        stages: None,
    };
    let report = check(
        "#check=error=true\nFROM scratch as base\n",
        &opts,
        &NoImages,
    )
    .expect("parses");
    assert_eq!(report.findings, Vec::new());
    assert_eq!(report.violation(), None);
}

#[test]
fn check_options_parse_as_buildkit_parses_them() {
    let config = CheckConfig::parse(" skip = A, B ;error=True").expect("parses");
    assert_eq!(
        config.skip,
        BTreeSet::from(["A".to_string(), "B".to_string()])
    );
    assert!(config.error);
    assert!(CheckConfig::parse("skip=all;experimental=all")
        .is_ok_and(|c| c.skip_all && c.experimental_all));
    for bad in ["skip", "color=red", "error=maybe"] {
        assert!(CheckConfig::parse(bad).is_err(), "{bad}");
    }
    let err = check(
        "# check=bogus=1\nFROM scratch\n",
        &CheckOptions {
            plan: &PlanOptions::new("Dockerfile"),
            ignore: None,
            stages: None,
        },
        &NoImages,
    )
    .expect_err("a bad directive fails");
    assert_eq!(err.span().map(|s| s.line), Some(1));
}

#[test]
fn stages_a_build_does_not_need_get_only_the_text_rules() {
    let text = "FROM scratch AS a\nFROM scratch AS b\nENV k v\nFROM a AS c\n";
    let plan = PlanOptions::new("Dockerfile");
    let needed = [true, false, true];
    let opts = CheckOptions {
        plan: &plan,
        ignore: None,
        stages: Some(&needed),
    };
    let report = check(text, &opts, &NoImages).expect("parses");
    assert_eq!(report.findings, Vec::new());
    let all = CheckOptions {
        stages: None,
        ..opts
    };
    let report = check(text, &all, &NoImages).expect("parses");
    assert_eq!(
        report
            .findings
            .iter()
            .map(|f| f.rule.name)
            .collect::<Vec<_>>(),
        ["LegacyKeyValueFormat"]
    );
}
