//! `estiba fsck [--repair]`: checks the store (every blob against its
//! digest, tags and cache records against the blobs, snapshots against
//! their diff ids) and prints one line per problem. `--repair` drops what
//! is broken, under the exclusive lock, so the next build makes it again.

use super::Failure;
use anyhow::{anyhow, Context};
use estiba_cache::FsckReport;
use std::path::Path;

pub(crate) fn fsck(root: Option<&Path>, repair: bool) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let report = if repair {
        let _lock = store.lock_exclusive().context("cannot lock the store")?;
        let found = store.fsck().context("cannot check the store")?;
        print_problems(&found);
        if found.is_clean() {
            found
        } else {
            let done = store.repair(&found).context("cannot repair the store")?;
            println!(
                "Removed {} blobs, {} image entries, {} cache records, {} snapshots",
                done.blobs_removed,
                done.index_entries_removed,
                done.records_removed,
                done.snapshots_removed
            );
            let after = store.fsck().context("cannot check the store")?;
            print_problems(&after);
            after
        }
    } else {
        let _lock = store.lock_shared().context("cannot lock the store")?;
        let report = store.fsck().context("cannot check the store")?;
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
        "Checked {} blobs, {} images, {} cache records, {} snapshots: no problems",
        report.blobs_checked,
        report.images_checked,
        report.records_checked,
        report.snapshots_checked
    );
    Ok(())
}

fn print_problems(report: &FsckReport) {
    for problem in &report.problems {
        println!("{problem}");
    }
}
