//! The `estiba` binary: parses arguments, runs the command, and turns any
//! error into a message and an exit code (1: the build failed, 2: usage).

mod cli;

/// Allocations from this size up are mapped and unmapped on their own
/// (glibc's default, 128 KiB, rises with every such block freed until
/// megabyte buffers come from the heap and stay resident after use): a
/// push compressing three layers peaks at about 57 MB with it fixed, 78 MB
/// without. The big buffers of the hot paths are reused, so few calls pay.
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

fn main() {
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(estiba::executor::INIT_ARG))
    {
        estiba::executor::init_main()
    }
    // SAFETY: mallopt only sets an allocator parameter; it is called
    // before any other thread exists. Failure (0) leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    std::process::exit(cli::main());
}
