//! Any bytes as the file `ADD archive /dst/sub/` names: if ADD takes it for
//! an archive ([`is_archive`]), extracting it (`extract_archive`, as the
//! solver does) returns Ok or Err, never panics, and never changes anything
//! outside the extraction directory; the layer the step then writes
//! (`Writer::add_extracted`) reads back with `list_layer` and holds nothing
//! but the destination and what is below it.
#![no_main]

mod support;

use estiba::copy::{extract_archive, is_archive, CopyOptions, Writer};
use estiba::layer::{list_layer, LayerOptions};
use estiba::rootfs::LayeredTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if !is_archive(data) {
        return;
    }
    let scratch = support::Scratch::get();
    let dir = tempfile::Builder::new()
        .prefix("add-")
        .tempdir_in(&scratch.root)
        .expect("make the extraction directory");
    let extracted = extract_archive(data, dir.path());
    scratch.check();
    if extracted.is_err() {
        return;
    }
    let mut writer = Writer::new(LayeredTree::new(Vec::new()), CopyOptions::default());
    if writer.add_extracted(dir, "/dst/sub/").is_err() {
        scratch.check();
        return;
    }
    let layer = writer.write_layer(Vec::new(), &LayerOptions::default());
    scratch.check();
    let Ok(layer) = layer else {
        return;
    };
    let entries = match list_layer(layer.as_slice()) {
        Ok(entries) => entries,
        Err(e) => panic!("ADD wrote a layer list_layer refuses: {e}"),
    };
    for e in entries {
        let path = e.path.to_string_lossy();
        assert!(
            path == "dst" || path == "dst/sub" || path.starts_with("dst/sub/"),
            "ADD to /dst/sub/ wrote {path:?}"
        );
    }
});
