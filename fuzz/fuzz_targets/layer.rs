//! Any bytes as a layer tar, applied onto a small lower file system the way
//! snapshots are made (whiteouts applied): `unpack_layer` returns Ok or Err,
//! never panics, and never changes anything outside the directory it
//! unpacks into, whatever symlinks the lower layer or the tar holds. A tar
//! it unpacks, `list_layer` reads too.
#![no_main]

mod support;

use estiba::layer::{list_layer, unpack_layer, UnpackOptions, WhiteoutMode};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::symlink;

fuzz_target!(|data: &[u8]| {
    let scratch = support::Scratch::get();
    let root = &scratch.root;
    // The lower layer: directories, files, and symlinks that point out of
    // the root if followed on the host rather than inside it.
    fs::create_dir_all(root.join("etc")).expect("lower etc");
    fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("lower passwd");
    fs::create_dir_all(root.join("a/b")).expect("lower a/b");
    fs::write(root.join("a/b/f"), b"lower").expect("lower a/b/f");
    symlink("../outside", root.join("up")).expect("lower up");
    symlink("/", root.join("top")).expect("lower top");
    symlink("a", root.join("l")).expect("lower l");

    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    };
    let unpacked = unpack_layer(data, root, &opts);
    scratch.check();
    if unpacked.is_ok() {
        if let Err(e) = list_layer(data) {
            panic!("unpack_layer applied a tar list_layer refuses: {e}");
        }
    }
});
