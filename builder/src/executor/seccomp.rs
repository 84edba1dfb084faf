//! Docker's default seccomp profile for the build container (RUN steps and
//! `estiba run`), so that a step can call what a `docker build` step can
//! and nothing else: the kernel keyring, new namespaces, mounts, kernel
//! modules, BPF and the like are refused with `EPERM`.
//!
//! The table below is ours, written from moby's profile
//! (`github.com/moby/profiles`, `seccomp/default_linux.go` at commit
//! cd3bed8061c7b7378b61fc6827c7885779417a75, after `seccomp/v0.2.3`; the
//! same rules as `seccomp/default.json`), and read the way moby reads it:
//! groups whose capability, architecture and kernel conditions hold for the
//! container are kept, syscalls this architecture lacks are skipped, and
//! several rules for one syscall allow it when any of them matches.
//!
//! It is compiled with `seccompiler` (rust-vmm, Firecracker's): pure Rust,
//! so the static musl build stays possible where libseccomp would bring a C
//! library, and its masked and 32-bit argument comparisons express every
//! condition of the profile. Syscall names become numbers through the
//! `syscalls` crate, which is generated from the kernel's tables; libc's
//! constants lack a dozen syscalls docker allows (`fchmodat2` on arm64,
//! `cachestat`, `futex_wait`, `statmount`, … on both).
//!
//! Architectures: the filter is for the native ABI only (x86_64, aarch64,
//! riscv64). Docker's also admits the compat ABIs (i386 and x32 on amd64,
//! arm on arm64); here a syscall of another ABI kills the process
//! (seccompiler's architecture check) and x32 syscall numbers match no rule
//! (`EPERM`). That is stricter than docker: 32-bit programs do not run.
//!
//! The filter is installed without `no_new_privs`, as runc does when the
//! spec does not ask for it (docker's default): setuid programs such as `su`
//! keep working. That takes `CAP_SYS_ADMIN`, so the init installs it before
//! it takes the step's user; every call it makes afterwards (`setgroups`,
//! `setuid`, `capset`, `prctl`, `execve`, …) is on the allow list.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Why the profile could not be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SeccompError {
    /// estiba was built for an architecture the filter does not cover.
    #[error("no seccomp profile for the {0} architecture")]
    UnsupportedArch(&'static str),
    /// seccompiler refused a rule or the program.
    #[error("cannot compile the seccomp profile")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Install(#[source] io::Error),
}

/// The native architecture: seccompiler's name for it and docker's (the
/// one `Filter::arches` lists).
#[cfg(target_arch = "x86_64")]
const ARCH: Option<(TargetArch, &str)> = Some((TargetArch::x86_64, "amd64"));
#[cfg(target_arch = "aarch64")]
const ARCH: Option<(TargetArch, &str)> = Some((TargetArch::aarch64, "arm64"));
#[cfg(target_arch = "riscv64")]
const ARCH: Option<(TargetArch, &str)> = Some((TargetArch::riscv64, "riscv64"));
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const ARCH: Option<(TargetArch, &str)> = None;

// Capabilities the profile's conditions name, by number
// (`linux/capability.h`).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_PACCT: u32 = 20;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_TIME: u32 = 25;
const CAP_SYS_TTY_CONFIG: u32 = 26;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The flags of `clone` that make namespaces: without `CAP_SYS_ADMIN`
/// clone may set none of them.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// What a matching syscall gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Allow,
    Errno(u32),
}

/// moby's `Filter`: as `includes`, every condition must hold; as
/// `excludes`, any one that holds drops the group.
#[derive(Debug, Clone, Copy)]
struct Filter {
    caps: &'static [u32],
    arches: &'static [&'static str],
    /// (major, minor).
    min_kernel: Option<(u32, u32)>,
}

const NONE: Filter = Filter {
    caps: &[],
    arches: &[],
    min_kernel: None,
};

const fn caps(caps: &'static [u32]) -> Filter {
    Filter {
        caps,
        arches: &[],
        min_kernel: None,
    }
}

const fn arches(arches: &'static [&'static str]) -> Filter {
    Filter {
        caps: &[],
        arches,
        min_kernel: None,
    }
}

/// One argument condition; a rule's conditions must all hold. `Dword`
/// compares the low 32 bits, what the kernel reads of an `int` argument.
#[derive(Debug)]
struct Arg {
    index: u8,
    len: Len,
    op: Op,
    value: u64,
}

/// One entry of the profile.
#[derive(Debug)]
struct Group {
    names: &'static [&'static str],
    action: Action,
    args: &'static [Arg],
    includes: Filter,
    excludes: Filter,
}

const fn allow(names: &'static [&'static str], includes: Filter) -> Group {
    Group {
        names,
        action: Action::Allow,
        args: &[],
        includes,
        excludes: NONE,
    }
}

const fn allow_if(names: &'static [&'static str], args: &'static [Arg]) -> Group {
    Group {
        names,
        action: Action::Allow,
        args,
        includes: NONE,
        excludes: NONE,
    }
}

const fn dword(index: u8, op: Op, value: u64) -> Arg {
    Arg {
        index,
        len: Len::Dword,
        op,
        value,
    }
}

/// Docker's default profile, entry by entry in moby's order.
const PROFILE: &[Group] = &[
    allow(
        &[
            "accept",
            "accept4",
            "access",
            "adjtimex",
            "alarm",
            "bind",
            "brk",
            "cachestat",
            "capget",
            "capset",
            "chdir",
            "chmod",
            "chown",
            "chown32",
            "clock_adjtime",
            "clock_adjtime64",
            "clock_getres",
            "clock_getres_time64",
            "clock_gettime",
            "clock_gettime64",
            "clock_nanosleep",
            "clock_nanosleep_time64",
            "close",
            "close_range",
            "connect",
            "copy_file_range",
            "creat",
            "dup",
            "dup2",
            "dup3",
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_ctl_old",
            "epoll_pwait",
            "epoll_pwait2",
            "epoll_wait",
            "epoll_wait_old",
            "eventfd",
            "eventfd2",
            "execve",
            "execveat",
            "exit",
            "exit_group",
            "faccessat",
            "faccessat2",
            "fadvise64",
            "fadvise64_64",
            "fallocate",
            "fanotify_mark",
            "fchdir",
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "fchown",
            "fchown32",
            "fchownat",
            "fcntl",
            "fcntl64",
            "fdatasync",
            "fgetxattr",
            "flistxattr",
            "flock",
            "fork",
            "fremovexattr",
            "fsetxattr",
            "fstat",
            "fstat64",
            "fstatat64",
            "fstatfs",
            "fstatfs64",
            "fsync",
            "ftruncate",
            "ftruncate64",
            "futex",
            "futex_requeue",
            "futex_time64",
            "futex_wait",
            "futex_waitv",
            "futex_wake",
            "futimesat",
            "getcpu",
            "getcwd",
            "getdents",
            "getdents64",
            "getegid",
            "getegid32",
            "geteuid",
            "geteuid32",
            "getgid",
            "getgid32",
            "getgroups",
            "getgroups32",
            "getitimer",
            "getpeername",
            "getpgid",
            "getpgrp",
            "getpid",
            "getppid",
            "getpriority",
            "getrandom",
            "getresgid",
            "getresgid32",
            "getresuid",
            "getresuid32",
            "getrlimit",
            "get_robust_list",
            "getrusage",
            "getsid",
            "getsockname",
            "getsockopt",
            "get_thread_area",
            "gettid",
            "gettimeofday",
            "getuid",
            "getuid32",
            "getxattr",
            "getxattrat",
            "inotify_add_watch",
            "inotify_init",
            "inotify_init1",
            "inotify_rm_watch",
            "io_cancel",
            "ioctl",
            "io_destroy",
            "io_getevents",
            "io_pgetevents",
            "io_pgetevents_time64",
            "ioprio_get",
            "ioprio_set",
            "io_setup",
            "io_submit",
            "ipc",
            "kill",
            "landlock_add_rule",
            "landlock_create_ruleset",
            "landlock_restrict_self",
            "lchown",
            "lchown32",
            "lgetxattr",
            "link",
            "linkat",
            "listen",
            "listmount",
            "listxattr",
            "listxattrat",
            "llistxattr",
            "_llseek",
            "lremovexattr",
            "lseek",
            "lsetxattr",
            "lstat",
            "lstat64",
            "madvise",
            "map_shadow_stack",
            "membarrier",
            "memfd_create",
            "memfd_secret",
            "mincore",
            "mkdir",
            "mkdirat",
            "mknod",
            "mknodat",
            "mlock",
            "mlock2",
            "mlockall",
            "mmap",
            "mmap2",
            "mprotect",
            "mq_getsetattr",
            "mq_notify",
            "mq_open",
            "mq_timedreceive",
            "mq_timedreceive_time64",
            "mq_timedsend",
            "mq_timedsend_time64",
            "mq_unlink",
            "mremap",
            "mseal",
            "msgctl",
            "msgget",
            "msgrcv",
            "msgsnd",
            "msync",
            "munlock",
            "munlockall",
            "munmap",
            "name_to_handle_at",
            "nanosleep",
            "newfstatat",
            "_newselect",
            "open",
            "openat",
            "openat2",
            "pause",
            "pidfd_open",
            "pidfd_send_signal",
            "pipe",
            "pipe2",
            "pkey_alloc",
            "pkey_free",
            "pkey_mprotect",
            "poll",
            "ppoll",
            "ppoll_time64",
            "prctl",
            "pread64",
            "preadv",
            "preadv2",
            "prlimit64",
            "process_mrelease",
            "pselect6",
            "pselect6_time64",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "read",
            "readahead",
            "readlink",
            "readlinkat",
            "readv",
            "recv",
            "recvfrom",
            "recvmmsg",
            "recvmmsg_time64",
            "recvmsg",
            "remap_file_pages",
            "removexattr",
            "removexattrat",
            "rename",
            "renameat",
            "renameat2",
            "restart_syscall",
            "riscv_hwprobe",
            "rmdir",
            "rseq",
            "rt_sigaction",
            "rt_sigpending",
            "rt_sigprocmask",
            "rt_sigqueueinfo",
            "rt_sigreturn",
            "rt_sigsuspend",
            "rt_sigtimedwait",
            "rt_sigtimedwait_time64",
            "rt_tgsigqueueinfo",
            "sched_getaffinity",
            "sched_getattr",
            "sched_getparam",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_getscheduler",
            "sched_rr_get_interval",
            "sched_rr_get_interval_time64",
            "sched_setaffinity",
            "sched_setattr",
            "sched_setparam",
            "sched_setscheduler",
            "sched_yield",
            "seccomp",
            "select",
            "semctl",
            "semget",
            "semop",
            "semtimedop",
            "semtimedop_time64",
            "send",
            "sendfile",
            "sendfile64",
            "sendmmsg",
            "sendmsg",
            "sendto",
            "setfsgid",
            "setfsgid32",
            "setfsuid",
            "setfsuid32",
            "setgid",
            "setgid32",
            "setgroups",
            "setgroups32",
            "setitimer",
            "setpgid",
            "setpriority",
            "setregid",
            "setregid32",
            "setresgid",
            "setresgid32",
            "setresuid",
            "setresuid32",
            "setreuid",
            "setreuid32",
            "setrlimit",
            "set_robust_list",
            "setsid",
            "setsockopt",
            "set_thread_area",
            "set_tid_address",
            "setuid",
            "setuid32",
            "setxattr",
            "setxattrat",
            "shmat",
            "shmctl",
            "shmdt",
            "shmget",
            "shutdown",
            "sigaltstack",
            "signalfd",
            "signalfd4",
            "sigprocmask",
            "sigreturn",
            "socketcall",
            "socketpair",
            "splice",
            "stat",
            "stat64",
            "statfs",
            "statfs64",
            "statmount",
            "statx",
            "symlink",
            "symlinkat",
            "sync",
            "sync_file_range",
            "syncfs",
            "sysinfo",
            "tee",
            "tgkill",
            "time",
            "timer_create",
            "timer_delete",
            "timer_getoverrun",
            "timer_gettime",
            "timer_gettime64",
            "timer_settime",
            "timer_settime64",
            "timerfd_create",
            "timerfd_gettime",
            "timerfd_gettime64",
            "timerfd_settime",
            "timerfd_settime64",
            "times",
            "tkill",
            "truncate",
            "truncate64",
            "ugetrlimit",
            "umask",
            "uname",
            "unlink",
            "unlinkat",
            "uretprobe",
            "utime",
            "utimensat",
            "utimensat_time64",
            "utimes",
            "vfork",
            "vmsplice",
            "wait4",
            "waitid",
            "waitpid",
            "write",
            "writev",
        ],
        NONE,
    ),
    allow(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        Filter {
            min_kernel: Some((4, 8)),
            ..NONE
        },
    ),
    // socket(2) for every address family but AF_ALG (38) and AF_VSOCK (40).
    allow_if(&["socket"], &[dword(0, Op::Lt, libc::AF_ALG as u64)]),
    allow_if(&["socket"], &[dword(0, Op::Eq, libc::AF_ALG as u64 + 1)]),
    allow_if(&["socket"], &[dword(0, Op::Gt, libc::AF_VSOCK as u64)]),
    // personality(2): PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
    // and the query 0xffffffff.
    allow_if(&["personality"], &[dword(0, Op::Eq, 0x0)]),
    allow_if(&["personality"], &[dword(0, Op::Eq, 0x0008)]),
    allow_if(&["personality"], &[dword(0, Op::Eq, 0x20000)]),
    allow_if(&["personality"], &[dword(0, Op::Eq, 0x20008)]),
    allow_if(&["personality"], &[dword(0, Op::Eq, 0xffff_ffff)]),
    allow(&["sync_file_range2", "swapcontext"], arches(&["ppc64le"])),
    allow(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        arches(&["arm", "arm64"]),
    ),
    allow(&["arch_prctl"], arches(&["amd64", "x32"])),
    allow(&["modify_ldt"], arches(&["amd64", "x32", "x86"])),
    allow(
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        arches(&["s390", "s390x"]),
    ),
    allow(&["riscv_flush_icache"], arches(&["riscv64"])),
    allow(&["open_by_handle_at"], caps(&[CAP_DAC_READ_SEARCH])),
    allow(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        caps(&[CAP_SYS_ADMIN]),
    ),
    // clone(2) without namespace flags (arg 0 but on s390, whose entry
    // with arg 1 is left out: no s390 here).
    Group {
        names: &["clone"],
        action: Action::Allow,
        args: &[Arg {
            index: 0,
            len: Len::Qword,
            op: Op::MaskedEq(NAMESPACE_FLAGS),
            value: 0,
        }],
        includes: NONE,
        excludes: Filter {
            caps: &[CAP_SYS_ADMIN],
            arches: &["s390", "s390x"],
            min_kernel: None,
        },
    },
    // clone3's flags are behind a pointer no filter can read: ENOSYS makes
    // C libraries fall back to clone.
    Group {
        names: &["clone3"],
        action: Action::Errno(libc::ENOSYS as u32),
        args: &[],
        includes: NONE,
        excludes: caps(&[CAP_SYS_ADMIN]),
    },
    allow(&["reboot"], caps(&[CAP_SYS_BOOT])),
    allow(&["chroot"], caps(&[CAP_SYS_CHROOT])),
    allow(
        &["delete_module", "init_module", "finit_module"],
        caps(&[CAP_SYS_MODULE]),
    ),
    allow(&["acct"], caps(&[CAP_SYS_PACCT])),
    allow(
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        caps(&[CAP_SYS_PTRACE]),
    ),
    allow(&["iopl", "ioperm"], caps(&[CAP_SYS_RAWIO])),
    allow(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        caps(&[CAP_SYS_TIME]),
    ),
    allow(&["vhangup"], caps(&[CAP_SYS_TTY_CONFIG])),
    allow(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        caps(&[CAP_SYS_NICE]),
    ),
    allow(&["syslog"], caps(&[CAP_SYSLOG])),
    allow(&["bpf"], caps(&[CAP_BPF])),
    allow(&["perf_event_open"], caps(&[CAP_PERFMON])),
];

/// The machine a profile is evaluated for.
#[derive(Debug, Clone, Copy)]
struct Host {
    /// Docker's name of the architecture.
    arch: &'static str,
    /// The running kernel, (major, minor).
    kernel: (u32, u32),
}

impl Filter {
    /// Whether every condition holds (`includes`).
    fn all(&self, caps: u64, host: Host) -> bool {
        self.caps.iter().all(|&c| has(caps, c))
            && (self.arches.is_empty() || self.arches.contains(&host.arch))
            && self.min_kernel.is_none_or(|min| host.kernel >= min)
    }

    /// Whether any condition holds (`excludes`).
    fn any(&self, caps: u64, host: Host) -> bool {
        self.caps.iter().any(|&c| has(caps, c))
            || self.arches.contains(&host.arch)
            || self.min_kernel.is_some_and(|min| host.kernel >= min)
    }
}

fn has(caps: u64, cap: u32) -> bool {
    cap < 64 && caps & (1 << cap) != 0
}

/// Syscall number → its rules (`None`: allowed whatever its arguments).
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// The profile for a container whose bounding set is `caps`, by action.
fn rules(caps: u64, host: Host) -> Result<BTreeMap<Action, Rules>, SeccompError> {
    let mut by_action: BTreeMap<Action, Rules> = BTreeMap::new();
    for group in PROFILE {
        if !group.includes.all(caps, host) || group.excludes.any(caps, host) {
            continue;
        }
        let conditions = group
            .args
            .iter()
            .map(|a| SeccompCondition::new(a.index, a.len.clone(), a.op.clone(), a.value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SeccompError::Compile)?;
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conditions).map_err(SeccompError::Compile)?)
        };
        let rules = by_action.entry(group.action).or_default();
        for nr in group.names.iter().filter_map(|name| number(name)) {
            let entry = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
            match (&rule, entry.as_mut()) {
                (Some(rule), Some(list)) => list.push(rule.clone()),
                // An unconditional entry wins over conditional ones.
                _ => *entry = None,
            }
        }
    }
    Ok(by_action)
}

/// The number of a syscall on this architecture, `None` if it has none.
fn number(name: &str) -> Option<i64> {
    // The `syscalls` crate names arm64's newfstatat (79) fstatat, as the
    // kernel's generic table does; libseccomp and docker say newfstatat.
    #[cfg(target_arch = "aarch64")]
    let name = if name == "newfstatat" {
        "fstatat"
    } else {
        name
    };
    name.parse::<syscalls::Sysno>()
        .ok()
        .map(|s| i64::from(s.id()))
}

/// The BPF programs of the profile for a container whose bounding set is
/// `caps`, to be installed in this order: the allow list (everything else
/// `EPERM`) first, then one program per other answer (clone3's `ENOSYS`;
/// with `skip_sync`, success without the call for [`SYNC_CALLS`]), which
/// the kernel prefers to the allow list's, an errno taking precedence over
/// allowing.
pub(super) fn programs(caps: u64, skip_sync: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let (target, arch) = ARCH.ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    let host = Host {
        arch,
        kernel: kernel_version(),
    };
    let mut by_action = rules(caps, host)?;
    if skip_sync {
        // Errno 0: the call returns 0 and is not made.
        let skipped = by_action.entry(Action::Errno(0)).or_default();
        for nr in SYNC_CALLS.iter().filter_map(|name| number(name)) {
            skipped.insert(nr, None);
        }
    }
    compile(by_action, target)
}

/// The calls that wait for written data to reach the disk, which a build
/// step's [`programs`] answer with success at once (`msync` is left alone:
/// it also orders a mapping's writes with the file's).
const SYNC_CALLS: [&str; 5] = ["fsync", "fdatasync", "sync_file_range", "syncfs", "sync"];

fn compile(
    by_action: BTreeMap<Action, Rules>,
    target: TargetArch,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut programs = Vec::new();
    for (action, rules) in by_action {
        let rules = rules
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect();
        let (mismatch, matched) = match action {
            Action::Allow => (eperm.clone(), SeccompAction::Allow),
            Action::Errno(errno) => (SeccompAction::Allow, SeccompAction::Errno(errno)),
        };
        let filter =
            SeccompFilter::new(rules, mismatch, matched, target).map_err(SeccompError::Compile)?;
        programs.push(BpfProgram::try_from(filter).map_err(SeccompError::Compile)?);
    }
    Ok(programs)
}

/// The running kernel's version, (major, minor); (0, 0) if unknown, which
/// leaves out the groups that need a minimum.
fn kernel_version() -> (u32, u32) {
    let uts = rustix::system::uname();
    parse_kernel_version(&uts.release().to_string_lossy())
}

/// `6.1.0-18-amd64` → (6, 1).
fn parse_kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Compiles the profile for `caps` and installs it in this thread, without
/// `no_new_privs` (which needs `CAP_SYS_ADMIN`). Nothing can remove it: it
/// holds for the process and everything it execs or forks.
pub(super) fn install(caps: u64, skip_sync: bool) -> Result<(), SeccompError> {
    for program in programs(caps, skip_sync)? {
        let len = u16::try_from(program.len())
            .map_err(|_| SeccompError::Install(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let fprog = libc::sock_fprog {
            len,
            filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: seccompiler's sock_filter is `repr(C)` with the kernel's
        // (and libc's) layout: code u16, jt u8, jf u8, k u32. The kernel
        // copies the program during the call and does not write to it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if ret != 0 {
            return Err(SeccompError::Install(io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        arch: match ARCH {
            Some((_, arch)) => arch,
            None => "unknown",
        },
        kernel: (6, 1),
    };

    fn nr(name: &str) -> i64 {
        number(name).unwrap_or_else(|| panic!("{name} has no number here"))
    }

    /// `Some(true)`: allowed whatever the arguments; `Some(false)`: allowed
    /// for some; `None`: not on the list.
    fn allowed(rules: &BTreeMap<Action, Rules>, name: &str) -> Option<bool> {
        rules
            .get(&Action::Allow)
            .and_then(|r| r.get(&nr(name)))
            .map(Option::is_none)
    }

    #[test]
    fn names_resolve_to_the_kernels_numbers() {
        assert_eq!(nr("read"), libc::SYS_read);
        assert_eq!(nr("execve"), libc::SYS_execve);
        assert_eq!(nr("newfstatat"), libc::SYS_newfstatat);
        assert_eq!(nr("clone3"), libc::SYS_clone3);
        assert_eq!(nr("keyctl"), libc::SYS_keyctl);
        assert_eq!(nr("fchmodat2"), 452);
        assert_eq!(number("socketcall"), None, "a 32-bit only syscall");
    }

    #[test]
    fn dockers_default_capabilities_get_dockers_list() {
        let rules = rules(super::super::sys::default_capability_mask(), HOST).expect("rules");
        for name in [
            "read",
            "openat",
            "execve",
            "setuid",
            "setgroups",
            "capset",
            "prctl",
            "seccomp",
            "mknodat",
            "chroot",
            "fchmodat2",
            "ptrace",
        ] {
            assert_eq!(allowed(&rules, name), Some(true), "{name}");
        }
        for name in ["clone", "socket", "personality"] {
            assert_eq!(allowed(&rules, name), Some(false), "{name} has conditions");
        }
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "bpf",
            "init_module",
            "reboot",
            "clone3",
            "sethostname",
        ] {
            assert_eq!(allowed(&rules, name), None, "{name} is refused");
        }
        let enosys = &rules[&Action::Errno(libc::ENOSYS as u32)];
        assert_eq!(enosys.keys().collect::<Vec<_>>(), [&nr("clone3")]);
    }

    #[test]
    fn cap_sys_admin_opens_namespaces_and_mounts() {
        let all = u64::MAX >> (63 - 40);
        let rules = rules(all, HOST).expect("rules");
        for name in [
            "mount", "unshare", "setns", "clone", "clone3", "bpf", "reboot",
        ] {
            assert_eq!(allowed(&rules, name), Some(true), "{name}");
        }
        assert!(!rules.contains_key(&Action::Errno(libc::ENOSYS as u32)));
        assert_eq!(allowed(&rules, "keyctl"), None, "never on docker's list");
    }

    #[test]
    fn old_kernels_lose_ptrace() {
        let old = Host {
            kernel: (4, 4),
            ..HOST
        };
        let rules = rules(super::super::sys::default_capability_mask(), old).expect("rules");
        assert_eq!(allowed(&rules, "ptrace"), None);
    }

    #[test]
    fn the_programs_compile_within_the_kernels_limit() {
        let programs =
            programs(super::super::sys::default_capability_mask(), false).expect("compile");
        assert_eq!(programs.len(), 2, "the allow list and clone3's ENOSYS");
        let with_syncs_skipped =
            super::programs(super::super::sys::default_capability_mask(), true).expect("compile");
        assert_eq!(with_syncs_skipped.len(), 3, "and the skipped syncs");
        for program in &programs {
            assert!(
                !program.is_empty() && program.len() <= 4096,
                "{}",
                program.len()
            );
        }
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.1.0-18-amd64"), (6, 1));
        assert_eq!(parse_kernel_version("4.8"), (4, 8));
        assert_eq!(parse_kernel_version("garbage"), (0, 0));
    }
}
