//! `--cache-to` and `--cache-from`, as buildx spells them.

use super::registry::CompressionFields;
use super::Failure;
use estiba::compress::{Codec, Compression};
use estiba::image::{CacheDest, CacheSource};
use estiba::registry::Reference;
use std::path::PathBuf;

/// Which steps `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The steps of the final image (BuildKit's default).
    Min,
    /// Every step of every stage built.
    Max,
}

/// One `--cache-to`.
#[derive(Debug, Clone)]
pub(crate) enum CacheTo {
    /// A cache artifact in a registry or a directory.
    Artifact {
        dest: CacheDest,
        mode: Mode,
        compression: Codec,
    },
    /// The cache metadata in the image's own config (`type=inline`).
    Inline,
}

fn usage(flag: &str, spec: &str, why: &str) -> Failure {
    Failure::Usage(format!("invalid {flag} {spec:?}: {why}"))
}

/// `key=value` fields, in order.
fn fields<'s>(flag: &str, spec: &'s str) -> Result<Vec<(&'s str, &'s str)>, Failure> {
    spec.split(',')
        .map(|f| {
            f.split_once('=')
                .ok_or_else(|| usage(flag, spec, &format!("{f:?} is not KEY=VALUE")))
        })
        .collect()
}

fn reference(flag: &str, spec: &str, text: &str) -> Result<Reference, Failure> {
    Reference::parse(text).map_err(|e| usage(flag, spec, &e.to_string()))
}

/// Parses a `--cache-to`.
pub(crate) fn parse_to(spec: &str) -> Result<CacheTo, Failure> {
    const FLAG: &str = "--cache-to";
    let mut kind = None;
    let mut target = None;
    let mut mode = Mode::Min;
    let mut fields_given = CompressionFields::default();
    for (k, v) in fields(FLAG, spec)? {
        if fields_given
            .take(k, v)
            .map_err(|why| usage(FLAG, spec, &why))?
        {
            continue;
        }
        match k {
            "type" => kind = Some(v),
            "ref" | "dest" => target = Some((k, v)),
            "mode" => {
                mode = match v {
                    "min" => Mode::Min,
                    "max" => Mode::Max,
                    _ => return Err(usage(FLAG, spec, "mode is min or max")),
                }
            }
            // BuildKit's knobs estiba needs not: accepted, as buildx does.
            "oci-mediatypes" | "image-manifest" | "ignore-error" => {}
            _ => return Err(usage(FLAG, spec, &format!("unknown field {k:?}"))),
        }
    }
    let compression = fields_given
        .codec(Codec::default_for(Compression::Gzip))
        .map_err(|why| usage(FLAG, spec, &why))?;
    match (kind, target) {
        (Some("inline"), None) => Ok(CacheTo::Inline),
        (Some("registry"), Some(("ref", r))) => Ok(CacheTo::Artifact {
            dest: CacheDest::Registry {
                reference: reference(FLAG, spec, r)?,
            },
            mode,
            compression,
        }),
        (Some("local"), Some(("dest", d))) => Ok(CacheTo::Artifact {
            dest: CacheDest::Local {
                dir: PathBuf::from(d),
            },
            mode,
            compression,
        }),
        (Some("registry"), _) => Err(usage(FLAG, spec, "type=registry needs ref=REF")),
        (Some("local"), _) => Err(usage(FLAG, spec, "type=local needs dest=DIR")),
        (Some("inline"), _) => Err(usage(FLAG, spec, "type=inline takes no ref or dest")),
        _ => Err(usage(
            FLAG,
            spec,
            "type is registry (ref=REF), local (dest=DIR) or inline",
        )),
    }
}

/// Parses a `--cache-from`: `type=registry,ref=REF`, `type=local,src=DIR`,
/// or a bare reference (a cache, or an image with an inline cache).
pub(crate) fn parse_from(spec: &str) -> Result<CacheSource, Failure> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        return Ok(CacheSource::Registry {
            reference: reference(FLAG, spec, spec)?,
        });
    }
    let mut kind = None;
    let mut target = None;
    for (k, v) in fields(FLAG, spec)? {
        match k {
            "type" => kind = Some(v),
            "ref" | "src" => target = Some((k, v)),
            "digest" | "tag" => {}
            _ => return Err(usage(FLAG, spec, &format!("unknown field {k:?}"))),
        }
    }
    match (kind, target) {
        (Some("registry"), Some(("ref", r))) => Ok(CacheSource::Registry {
            reference: reference(FLAG, spec, r)?,
        }),
        (Some("local"), Some(("src", d))) => Ok(CacheSource::Local {
            dir: PathBuf::from(d),
        }),
        (Some("registry"), _) => Err(usage(FLAG, spec, "type=registry needs ref=REF")),
        (Some("local"), _) => Err(usage(FLAG, spec, "type=local needs src=DIR")),
        _ => Err(usage(
            FLAG,
            spec,
            "type is registry (ref=REF) or local (src=DIR)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_flags_read_as_buildx_writes_them() {
        match parse_to("type=registry,ref=reg.lan:5000/app:cache,mode=max,compression=zstd") {
            Ok(CacheTo::Artifact {
                dest: CacheDest::Registry { reference },
                mode: Mode::Max,
                compression:
                    Codec {
                        compression: Compression::Zstd,
                        level: 3,
                    },
            }) => assert_eq!(reference.to_string(), "reg.lan:5000/app:cache"),
            Ok(other) => panic!("{other:?}"),
            Err(_) => panic!("refused"),
        }
        assert!(matches!(
            parse_to("type=local,dest=/tmp/c"),
            Ok(CacheTo::Artifact {
                mode: Mode::Min,
                compression,
                ..
            }) if compression == Codec::default_for(Compression::Gzip)
        ));
        assert!(matches!(
            parse_to("type=local,dest=/tmp/c,compression=zstd,compression-level=19"),
            Ok(CacheTo::Artifact {
                compression: Codec {
                    compression: Compression::Zstd,
                    level: 19,
                },
                ..
            })
        ));
        assert!(matches!(parse_to("type=inline"), Ok(CacheTo::Inline)));
        for bad in [
            "type=registry",
            "type=local,src=/x",
            "type=s3,ref=x",
            "mode=max",
            "type=registry,ref=x,mode=all",
            "type=local,dest=/tmp/c,compression=lz4",
            "type=local,dest=/tmp/c,compression-level=10",
            "type=local,dest=/tmp/c,compression=zstd,compression-level=fast",
        ] {
            assert!(matches!(parse_to(bad), Err(Failure::Usage(_))), "{bad}");
        }
        assert!(matches!(
            parse_from("reg.lan:5000/app:1"),
            Ok(CacheSource::Registry { .. })
        ));
        assert!(matches!(
            parse_from("type=local,src=/tmp/c"),
            Ok(CacheSource::Local { .. })
        ));
        for bad in ["type=local,dest=/x", "type=registry", "Upper/x:Bad Tag"] {
            assert!(matches!(parse_from(bad), Err(Failure::Usage(_))), "{bad}");
        }
    }
}
