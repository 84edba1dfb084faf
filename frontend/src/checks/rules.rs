//! BuildKit's lint rules: their names, descriptions and documentation
//! addresses (moby/buildkit `frontend/dockerfile/linter/ruleset.go`), and the
//! small predicates some of them need (secret-looking names, image
//! references, EXPOSE specs), each from the BuildKit file that defines it.

/// One lint rule, as BuildKit names and documents it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// The name `# check=skip=` takes (`StageNameCasing`).
    pub name: &'static str,
    /// BuildKit's one-line description.
    pub description: &'static str,
    /// The rule's page on docs.docker.com.
    pub url: &'static str,
    /// Runs only when `# check=experimental=` names it (or says `all`).
    pub experimental: bool,
}

macro_rules! rules {
    ($($konst:ident $name:literal $slug:literal $experimental:literal $description:literal;)*) => {
        $(
            #[doc = $description]
            pub const $konst: Rule = Rule {
                name: $name,
                description: $description,
                url: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
                experimental: $experimental,
            };
        )*
        /// Every rule estiba runs, in BuildKit's order.
        pub const ALL: &[&Rule] = &[$(&$konst),*];
    };
}

// Names, descriptions and URLs: moby/buildkit frontend/dockerfile/linter/ruleset.go.
rules! {
    STAGE_NAME_CASING "StageNameCasing" "stage-name-casing" false
        "Stage names should be lowercase";
    FROM_AS_CASING "FromAsCasing" "from-as-casing" false
        "The 'as' keyword should match the case of the 'from' keyword";
    CONSISTENT_INSTRUCTION_CASING "ConsistentInstructionCasing" "consistent-instruction-casing" false
        "All commands within the Dockerfile should use the same casing (either upper or lower)";
    DUPLICATE_STAGE_NAME "DuplicateStageName" "duplicate-stage-name" false
        "Stage names should be unique";
    RESERVED_STAGE_NAME "ReservedStageName" "reserved-stage-name" false
        "Reserved words should not be used as stage names";
    JSON_ARGS_RECOMMENDED "JSONArgsRecommended" "json-args-recommended" false
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals";
    MAINTAINER_DEPRECATED "MaintainerDeprecated" "maintainer-deprecated" false
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author";
    UNDEFINED_ARG_IN_FROM "UndefinedArgInFrom" "undefined-arg-in-from" false
        "FROM command must use declared ARGs";
    WORKDIR_RELATIVE_PATH "WorkdirRelativePath" "workdir-relative-path" false
        "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes";
    UNDEFINED_VAR "UndefinedVar" "undefined-var" false
        "Variables should be defined before their use";
    MULTIPLE_INSTRUCTIONS_DISALLOWED "MultipleInstructionsDisallowed" "multiple-instructions-disallowed" false
        "Multiple instructions of the same type should not be used in the same stage";
    LEGACY_KEY_VALUE_FORMAT "LegacyKeyValueFormat" "legacy-key-value-format" false
        "Legacy key/value format with whitespace separator should not be used";
    SECRETS_USED_IN_ARG_OR_ENV "SecretsUsedInArgOrEnv" "secrets-used-in-arg-or-env" false
        "Sensitive data should not be used in the ARG or ENV commands";
    INVALID_DEFAULT_ARG_IN_FROM "InvalidDefaultArgInFrom" "invalid-default-arg-in-from" false
        "Default value for global ARG results in an empty or invalid base image name";
    FROM_PLATFORM_FLAG_CONST_DISALLOWED "FromPlatformFlagConstDisallowed" "from-platform-flag-const-disallowed" false
        "FROM --platform flag should not use a constant value";
    COPY_IGNORED_FILE "CopyIgnoredFile" "copy-ignored-file" false
        "Attempting to Copy file that is excluded by .dockerignore";
    INVALID_DEFINITION_DESCRIPTION "InvalidDefinitionDescription" "invalid-definition-description" true
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.";
    EXPOSE_PROTO_CASING "ExposeProtoCasing" "expose-proto-casing" false
        "Protocol in EXPOSE instruction should be lowercase";
    EXPOSE_INVALID_FORMAT "ExposeInvalidFormat" "expose-invalid-format" false
        "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release";
}

/// Whether an ARG or ENV name looks like it holds a secret: one of its
/// `_`-separated words is a secret word and none is an allowed one
/// (`getSecretsRegex` in moby/buildkit
/// frontend/dockerfile/dockerfile2llb/validations.go; its regular
/// expressions `(?i)(?:_|^)(?:word)(?:_|$)` test exactly the words between
/// underscores).
pub(crate) fn looks_secret(key: &str) -> bool {
    const SECRET: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOWED: [&str; 3] = ["public", "file", "version"];
    let has = |words: &[&str]| {
        key.split('_')
            .any(|part| words.iter().any(|w| part.eq_ignore_ascii_case(w)))
    };
    has(&SECRET) && !has(&ALLOWED)
}

/// Whether `text` parses as an image reference the way
/// distribution/reference's `ParseNormalizedNamed` (which
/// `validateBaseImagesWithDefaultArgs` calls) accepts it:
/// `[domain[:port]/]path[:tag][@algo:hex]`, lowercase path components, not a
/// bare 64-hex image ID.
pub(crate) fn is_image_reference(text: &str) -> bool {
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let Some((algo, hex)) = digest.split_once(':') else {
            return false;
        };
        let algo_ok = !algo.is_empty()
            && algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-_".contains(c));
        if !algo_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return false;
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok
            || tag.len() > 128
            || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return false;
        }
    }
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    if name.len() == 64 && name.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return false;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    let has_domain = parts.len() > 1
        && (first.contains(['.', ':']) || first == "localhost" || first != first.to_lowercase());
    if has_domain {
        if !is_domain(first) {
            return false;
        }
        parts.remove(0);
    }
    parts.iter().all(|p| is_path_component(p))
}

/// `host[:port]`: dot-separated alphanumeric labels with inner dashes.
fn is_domain(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    loop {
        let mut run = 0;
        while chars
            .next_if(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .is_some()
        {
            run += 1;
        }
        if run == 0 {
            return false;
        }
        match chars.next() {
            None => return true,
            Some('.') => {}
            Some('_') => {
                chars.next_if_eq(&'_');
            }
            Some('-') => while chars.next_if_eq(&'-').is_some() {},
            Some(_) => return false,
        }
    }
}

/// What the EXPOSE rules need of one EXPOSE word.
pub(crate) struct PortSpec<'a> {
    /// Whether an IP address or a host port was given.
    pub(crate) mapped: bool,
    /// The protocol as written, `""` when none.
    pub(crate) proto: &'a str,
}

/// An EXPOSE word split as BuildKit's `portSpecs.splitParts` and
/// `splitProtoPort` do (moby/buildkit
/// frontend/dockerfile/dockerfile2llb/convert_expose.go): `[ip:]host:port`
/// and `port/proto`. `None` when the build itself rejects the word (no port,
/// an unknown protocol), which the lint then leaves alone.
pub(crate) fn split_port(raw: &str) -> Option<PortSpec<'_>> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => ("", "", *c),
        [h, c] => ("", *h, *c),
        [.., h, c] => (&raw[..raw.len() - h.len() - c.len() - 2], *h, *c),
        [] => return None,
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty()
        || !matches!(
            proto.to_ascii_lowercase().as_str(),
            "" | "tcp" | "udp" | "sctp"
        )
    {
        return None;
    }
    Some(PortSpec {
        mapped: !ip.is_empty() || !host.is_empty(),
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_as_buildkit_tests_them() {
        for secret in [
            "SECRET_PASSPHRASE",
            "SUPER_Secret",
            "password",
            "super_duper_secret_token",
            "auth",
            "apikey",
            "git_key",
        ] {
            assert!(looks_secret(secret), "{secret}");
        }
        for fine in [
            "sunflower",
            "PUBLIC_KEY",
            "public_token",
            "SECRET_PASSPHRASE_FILE",
            "password_file",
            "AUTH_MODULE_VERSION",
            "keyboard",
            "monkey",
        ] {
            assert!(!looks_secret(fine), "{fine}");
        }
    }

    #[test]
    fn image_references_as_distribution_reads_them() {
        for good in [
            "busybox",
            "busybox:latest",
            "scratch",
            "library/busybox:1.36",
            "localhost:5000/a/b:c",
            "registry.example.com/team/app-x__y.z",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(is_image_reference(good), "{good}");
        }
        for bad in [
            "",
            "busybox:",
            "busy:box:",
            "Busybox",
            "a//b",
            "-a",
            "a:-tag",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_image_reference(bad), "{bad}");
        }
    }

    #[test]
    fn expose_words_split_as_buildkit_splits_them() {
        let spec = |raw| split_port(raw).map(|p| (p.mapped, p.proto.to_string()));
        assert_eq!(spec("80"), Some((false, String::new())));
        assert_eq!(spec("80/TcP"), Some((false, "TcP".to_string())));
        assert_eq!(spec("5000:5000"), Some((true, String::new())));
        assert_eq!(spec("127.0.0.1:80:80"), Some((true, String::new())));
        assert_eq!(spec("[::1]:8080:8080/udp"), Some((true, "udp".to_string())));
        assert_eq!(spec("80/bogus"), None);
        assert_eq!(spec("/tcp"), None);
    }
}
