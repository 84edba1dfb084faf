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
    // As the solver: the extraction directory is a temp dir of the store.
    let store = estiba_cache::Store::open(&scratch.root.join("store")).expect("open a store");
    let dir = store
        .temp_dir("add")
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
