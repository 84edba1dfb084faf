//! `estiba fsck [--repair] [--full]`: checks the store (every blob against
//! its digest, tags and cache records against the blobs, snapshots against
//! their diff ids; with `--full`, snapshots' trees against their layers
//! unpacked again) and prints one line per problem. `--repair` drops what
//! is broken, under the exclusive lock, so the next build makes it again.

use super::Failure;
use anyhow::{anyhow, Context};
use estiba_cache::{FsckReport, Problem, SnapshotFault, Store};
use std::path::Path;

pub(crate) fn fsck(root: Option<&Path>, repair: bool, full: bool) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let report = if repair {
        let _lock = store.lock_exclusive().context("cannot lock the store")?;
        let found = check(&store, full)?;
        print_problems(&found);
        if found.is_clean() {
            found
        } else {
            let done = store.repair(&found).context("cannot repair the store")?;
            println!(
                "Removed {} blobs, {} image entries, {} cache records, {} snapshots, \
                 {} compressed layer records",
                done.blobs_removed,
                done.index_entries_removed,
                done.records_removed,
                done.snapshots_removed,
                done.compressed_records_removed
            );
            let after = check(&store, full)?;
            print_problems(&after);
            after
        }
    } else {
        let _lock = store.lock_shared().context("cannot lock the store")?;
        let report = check(&store, full)?;
        print_problems(&report);
        report
    };
    if !report.is_clean() {
        return Err(anyhow!(
            "{} problems in the store at {}{}",
            report.problems.len(),
            store.root().display(),
            if repair {
                ""
            } else {
                " (estiba fsck --repair drops them)"
            }
        )
        .into());
    }
    println!(
        "Checked {} blobs, {} images, {} cache records, {} snapshots, \
         {} compressed layer records: no problems",
        report.blobs_checked,
        report.images_checked,
        report.records_checked,
        report.snapshots_checked,
        report.compressed_checked
    );
    Ok(())
}

fn print_problems(report: &FsckReport) {
    for problem in &report.problems {
        println!("{problem}");
    }
}

/// [`Store::fsck`], and with `full` every snapshot that has a sound layer
/// compared with that layer unpacked again.
fn check(store: &Store, full: bool) -> anyhow::Result<FsckReport> {
    let mut report = store.fsck().context("cannot check the store")?;
    if !full {
        return Ok(report);
    }
    let layers = std::mem::take(&mut report.layers);
    for (diff_id, layer) in &layers {
        let name = diff_id.hex().to_string();
        let known = report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::BrokenSnapshot { name: n, .. } if *n == name));
        let Some(tree) = store.snapshot(diff_id).filter(|_| !known) else {
            continue;
        };
        let differs = estiba::verify::compare_snapshot(store, &tree, layer)
            .with_context(|| format!("cannot check snapshot {name}"))?;
        if let Some(detail) = differs {
            report.problems.push(Problem::BrokenSnapshot {
                name,
                fault: SnapshotFault::DiffersFromLayer {
                    layer: *layer,
                    detail,
                },
            });
        }
    }
    report.layers = layers;
    Ok(report)
}
