//! The seccomp filter: system calls no map-reduce plugin or build needs fail with `EPERM`.
//!
//! Refused: tracing and reading other processes (`ptrace`, `process_vm_*`, `pidfd_getfd`),
//! mounting and changing root, `bpf`, the kernel keyring, kexec, kernel modules,
//! `perf_event_open`, entering or making namespaces (`setns`, `unshare` with any flag but
//! `CLONE_FILES`, `clone` with a namespace flag), `io_uring` (whose operations bypass this filter), `userfaultfd`,
//! file handles (`open_by_handle_at` bypasses paths), the kernel log, swap, reboot, and
//! `socket` when the policy has no network. `clone3`, whose flags a filter cannot read, fails
//! with `ENOSYS` so that the C library falls back to `clone`; so do x32 system calls, which
//! would otherwise bypass the filter's numbers.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

use super::{Feature, SandboxError, Unavailable};

/// Refused whatever their arguments.
const REFUSED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_perf_event_open,
    libc::SYS_setns,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
];

/// The namespace flags `clone` is refused with.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The audit architecture of this target, which the filters check first.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xC000_00F3;

/// The bit x32 system call numbers carry on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Checks the kernel has seccomp filters that can return an errno.
pub(super) fn probe() -> Result<(), Unavailable> {
    let unavailable = |reason: String| Unavailable { feature: Feature::Seccomp, reason };
    if TargetArch::try_from(std::env::consts::ARCH).is_err() {
        return Err(unavailable(format!("the sandbox has no seccomp filter for {}", std::env::consts::ARCH)));
    }
    // SAFETY: PR_GET_SECCOMP only reads this thread's mode.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err(unavailable(format!(
            "this kernel has no seccomp ({}): it needs CONFIG_SECCOMP_FILTER",
            std::io::Error::last_os_error()
        )));
    }
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: the kernel reads one u32 action from the pointer.
    let available = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action as *const u32) };
    if available != 0 {
        return Err(unavailable(format!(
            "this kernel's seccomp cannot return errors ({})",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Installs the filters on the calling thread (threads and processes started later inherit
/// them). `no_new_privs` must already be set.
pub(super) fn restrict(network: bool) -> Result<(), SandboxError> {
    let refusals = refusals(network)?;
    let fallbacks = fallbacks();
    for program in [&refusals, &fallbacks] {
        seccompiler::apply_filter(program)
            .map_err(|e| SandboxError::Seccomp(format!("cannot install the filter: {e}")))?;
    }
    Ok(())
}

/// The filter answering `EPERM` to what the sandbox refuses.
fn refusals(network: bool) -> Result<BpfProgram, SandboxError> {
    let error = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = REFUSED.iter().map(|&call| (call, Vec::new())).collect();
    if !network {
        rules.insert(libc::SYS_socket, Vec::new());
    }
    // The flags are clone's first argument on every architecture the filter supports.
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
                .and_then(|condition| SeccompRule::new(vec![condition]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    rules.insert(libc::SYS_clone, clone_rules);
    // `unshare(CLONE_FILES)` only gives a thread its own copy of the file table: the executor's
    // threads do it to capture what each call prints (`worker::executor::capture`).
    let files_only = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, libc::CLONE_FILES as u64)
        .and_then(|condition| SeccompRule::new(vec![condition]))
        .map_err(error)?;
    rules.insert(libc::SYS_unshare, vec![files_only]);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(error)?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(error)?;
    filter.try_into().map_err(error)
}

/// The filter answering `ENOSYS` to `clone3` and to x32 system calls, written out by hand
/// since it matches on the call number's bits.
fn fallbacks() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    let op = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, ARCH_OFFSET, 0, 0),
        op(JEQ_K, AUDIT_ARCH, 1, 0),
        op(RET_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
        op(LD_W_ABS, NR_OFFSET, 0, 0),
        op(JSET_K, X32_SYSCALL_BIT, 2, 0),
        op(JEQ_K, libc::SYS_clone3 as u32, 1, 0),
        op(RET_K, libc::SECCOMP_RET_ALLOW, 0, 0),
        op(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, 0, 0),
    ]
}
