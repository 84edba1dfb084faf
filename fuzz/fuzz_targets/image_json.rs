//! Any bytes as an image config or manifest, as estiba reads them from a
//! loaded archive or the store: parsing returns Ok or Err, never panics;
//! what parses writes back out and reads again as the same thing (the config
//! a build writes is the base's config re-serialized); the runtime config
//! a build starts from is stable under apply; times parse without panic and
//! round-trip.
#![no_main]

use estiba::image::{parse_rfc3339, rfc3339, ImageConfig, Manifest};
use estiba_cache::{Descriptor, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let out = serde_json::to_vec(&config).expect("a parsed config serializes");
        let again: ImageConfig = serde_json::from_slice(&out).expect("a written config parses");
        let out2 = serde_json::to_vec(&again).expect("a parsed config serializes");
        assert_eq!(out, out2, "a config changes when written twice");
        let planned = config.planned();
        let mut applied = config.clone();
        applied.apply(&planned);
        assert_eq!(applied.planned(), planned, "planned() after apply differs");
        for diff_id in &config.rootfs.diff_ids {
            if let Ok(d) = diff_id.parse::<Digest>() {
                assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
            }
        }
        if let Some(t) = config.created.as_deref().and_then(parse_rfc3339) {
            // Times an image can carry: years 0 to 9999.
            if (-62_167_219_200..=253_402_300_799).contains(&t) {
                assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "time {t}");
            }
        }
    }
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let out = serde_json::to_vec(&manifest).expect("a parsed manifest serializes");
        let again: Manifest = serde_json::from_slice(&out).expect("a written manifest parses");
        assert_eq!(again, manifest);
    }
    if let Ok(desc) = serde_json::from_slice::<Descriptor>(data) {
        let out = serde_json::to_vec(&desc).expect("a parsed descriptor serializes");
        let again: Descriptor = serde_json::from_slice(&out).expect("a written descriptor parses");
        assert_eq!(again, desc);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_rfc3339(text);
    }
});
