//! A busybox base image's root filesystem, made from Debian's
//! busybox-static (no image can be pulled here), and tars of trees.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A busybox root filesystem in `rootfs`: busybox-static, a few applets,
/// and /etc files with a user `app` (1000) and a group `staff` (50).
pub(crate) fn busybox_rootfs(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (scripts/test does)"
    );
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "ls", "cat", "echo", "id"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .expect("write /etc/passwd");
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nstaff:x:50:\napp:x:1000:\n",
    )
    .expect("write /etc/group");
}

/// A tar of the tree `rootfs`, beside it, as GNU tar writes it.
pub(crate) fn tar_tree(rootfs: &Path) -> PathBuf {
    let tar = rootfs.with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    tar
}
