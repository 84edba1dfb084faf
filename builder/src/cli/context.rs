//! Where `estiba build` takes its context and Dockerfile from, as the docker
//! CLI does (`cli/command/image/build.go`): a directory; `-`, standard
//! input holding a tar of the context (plain or compressed) or a
//! Dockerfile alone with an empty context; and `-f -`, the Dockerfile from
//! standard input beside a context directory.

use super::{read_dockerfile, Failure};
use anyhow::Context;
use estiba_cache::Store;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A build's context directory and Dockerfile, with whatever holds a
/// context unpacked from standard input until the build ends.
pub(crate) struct Source {
    /// The directory the build reads.
    pub(crate) dir: PathBuf,
    /// The Dockerfile's name as the user gave it (`.dockerignore` beside
    /// it goes by this name; `-` for standard input).
    pub(crate) named: PathBuf,
    /// The file the Dockerfile was read from (`-` for standard input).
    pub(crate) path: PathBuf,
    /// The Dockerfile.
    pub(crate) text: String,
    /// True when the context came from standard input: it has no place of
    /// its own for a stat cache.
    pub(crate) from_stdin: bool,
    _unpacked: Option<Unpacked>,
}

/// The directory a context from standard input is unpacked in, removed
/// when the build ends.
enum Unpacked {
    Store(estiba_cache::TempDir),
    System(tempfile::TempDir),
}

impl Unpacked {
    fn path(&self) -> &Path {
        match self {
            Unpacked::Store(t) => t.path(),
            Unpacked::System(t) => t.path(),
        }
    }
}

/// Reads the context and Dockerfile named by the build's arguments.
/// `store` is where a context from standard input is unpacked (`None`
/// for `--dry-run`, which uses the system's temporary directory).
pub(crate) fn open(
    context: &Path,
    file: Option<&Path>,
    store: Option<&Store>,
) -> Result<Source, Failure> {
    let stdin_file = file == Some(Path::new("-"));
    if context == Path::new("-") {
        if stdin_file {
            return Err(Failure::Usage(
                "standard input cannot be both the build context and the Dockerfile".to_string(),
            ));
        }
        return from_stdin(file, store);
    }
    match std::fs::metadata(context) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Failure::Usage(format!(
                "the build context {} is not a directory (give a directory, or - to read a tar from standard input)",
                context.display()
            )))
        }
        Err(_) => {
            return Err(Failure::Usage(format!(
                "the build context {} does not exist",
                context.display()
            )))
        }
    }
    let named = file.map_or_else(|| context.join("Dockerfile"), Path::to_path_buf);
    let path = dockerfile_to_read(&named);
    let text = read_dockerfile(&path)?;
    Ok(Source {
        dir: context.to_path_buf(),
        named,
        path,
        text,
        from_stdin: false,
        _unpacked: None,
    })
}

/// The file read for the Dockerfile `named`: a missing `Dockerfile` falls
/// back to `dockerfile` in the same directory (BuildKit
/// `frontend/dockerui/config.go`, after moby/moby#10858; the docker CLI's
/// `GetContextFromLocalDir` does the same for the default name).
fn dockerfile_to_read(named: &Path) -> PathBuf {
    if named.file_name() == Some("Dockerfile".as_ref()) && std::fs::metadata(named).is_err() {
        let lower = named.with_file_name("dockerfile");
        if std::fs::metadata(&lower).is_ok() {
            return lower;
        }
    }
    named.to_path_buf()
}

/// `estiba build -`: a tar of the context (gzip, bzip2, xz or zstd
/// compressed or not), or else a Dockerfile and an empty context, as the
/// docker CLI tells them apart (`DetectArchiveReader`: a compression
/// magic or a tar header).
fn from_stdin(file: Option<&Path>, store: Option<&Store>) -> Result<Source, Failure> {
    let stdin = std::io::stdin().lock();
    let mut input = estiba::compress::decompressing_reader(stdin)
        .context("cannot read the build context from standard input")?;
    // The first block, read whole (a pipe gives what it has), then the rest.
    let mut head = Vec::with_capacity(512);
    input
        .by_ref()
        .take(512)
        .read_to_end(&mut head)
        .context("cannot read the build context from standard input")?;
    let mut input = std::io::Cursor::new(head.clone()).chain(input);
    let unpacked = match store {
        Some(store) => Unpacked::Store(store.temp_dir("context")?),
        None => Unpacked::System(tempfile::tempdir().context("cannot make a temporary directory")?),
    };
    let dir = unpacked.path().to_path_buf();
    if is_tar(&head) {
        let opts = estiba::layer::UnpackOptions {
            devices: false,
            ..estiba::layer::UnpackOptions::default()
        };
        estiba::layer::unpack_layer(input, &dir, &opts)
            .context("cannot unpack the build context from standard input (a tar)")?;
        let named = dir.join(file.unwrap_or(Path::new("Dockerfile")));
        let path = dockerfile_to_read(&named);
        let text = read_dockerfile(&path).with_context(|| {
            format!(
                "the context from standard input has no {}",
                file.unwrap_or(Path::new("Dockerfile")).display()
            )
        })?;
        return Ok(Source {
            dir,
            named,
            path,
            text,
            from_stdin: true,
            _unpacked: Some(unpacked),
        });
    }
    if file.is_some() {
        return Err(Failure::Usage(
            "-f names a Dockerfile in the context, but standard input holds a Dockerfile, not a tar of a context".to_string(),
        ));
    }
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .context("cannot read the Dockerfile from standard input")?;
    Ok(Source {
        dir,
        named: PathBuf::from("-"),
        path: PathBuf::from("-"),
        text: String::from_utf8_lossy(&bytes).into_owned(),
        from_stdin: true,
        _unpacked: Some(unpacked),
    })
}

/// Whether `head` starts with a tar header: `ustar` at offset 257 (POSIX
/// and GNU), or a v7 header whose checksum adds up.
fn is_tar(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    let block = &head[..512];
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == want && block[0] != 0
}

#[cfg(test)]
mod tests {
    use super::is_tar;

    #[test]
    fn tars_are_told_from_dockerfiles() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "Dockerfile", &b"abc"[..])
            .expect("append");
        let tar = builder.into_inner().expect("tar");
        assert!(is_tar(&tar));
        let mut old = tar::Header::new_old();
        old.set_path("a").expect("path");
        old.set_size(0);
        old.set_cksum();
        let mut v7 = old.as_bytes().to_vec();
        v7.resize(1024, 0);
        assert!(is_tar(&v7), "a v7 header by its checksum");
        let dockerfile = format!("FROM scratch\n{}", "# padding\n".repeat(60));
        assert!(!is_tar(dockerfile.as_bytes()));
        assert!(!is_tar(b"FROM scratch\n"));
    }
}
