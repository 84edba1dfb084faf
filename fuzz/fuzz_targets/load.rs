//! Any bytes as the archive `estiba load` reads: `read_archive` returns Ok
//! or Err, never panics, writes only inside the temporary directory it is
//! given and leaves nothing there once the archive is dropped. What it
//! returns has every digest it claims: each layer decompresses to its diff
//! ID and lives inside the archive's directory, each config hashes to its
//! digest, and every tag parses as a reference or is refused.
#![no_main]

mod support;

use estiba::archive::read_archive;
use estiba::registry::Reference;
use estiba_cache::{Digest, Hasher};
use libfuzzer_sys::fuzz_target;
use std::io;

fuzz_target!(|data: &[u8]| {
    let scratch = support::Scratch::get();
    if let Ok(archive) = read_archive(data, &scratch.root) {
        assert!(!archive.images.is_empty(), "an archive without images");
        for image in &archive.images {
            assert_eq!(Digest::of(&image.config), image.config_digest);
            if let (Some(m), Some(d)) = (&image.manifest, image.manifest_digest) {
                assert_eq!(Digest::of(m), d);
            }
            for tag in &image.tags {
                if let Ok(r) = Reference::parse(tag) {
                    let _ = (r.to_string(), r.familiar());
                }
            }
            for layer in &image.layers {
                assert!(layer.path.starts_with(archive.dir()), "a layer outside");
                let Ok(mut tar) = layer.open_tar() else {
                    panic!("a layer read_archive checked does not decompress");
                };
                let mut hasher = Hasher::new();
                io::copy(&mut tar, &mut hasher).expect("a checked layer reads");
                assert_eq!(hasher.finish(), layer.diff_id, "diff ID of {}", layer.entry);
            }
        }
        drop(archive);
    }
    scratch.check();
    let left = std::fs::read_dir(&scratch.root)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "read_archive left files behind");
});
