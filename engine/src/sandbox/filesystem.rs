//! Landlock: what the confined process may open, and no TCP.

use std::io;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};

use super::{Feature, Policy, SandboxError, Unavailable};

/// The oldest landlock ABI the sandbox accepts: 3 (Linux 6.2) is the first that also refuses
/// truncating files the process may not write.
pub(super) const REQUIRED_ABI: i32 = 3;

/// The newest ABI whose rights the sandbox asks for; an older kernel enforces those it has.
const WANTED_ABI: ABI = ABI::V9;

/// The kernel's landlock ABI, or the error (`EOPNOTSUPP`: disabled, `ENOSYS`: absent).
fn kernel_abi() -> Result<i32, io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: asking for the version passes no ruleset.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 0 { Err(io::Error::last_os_error()) } else { Ok(abi as i32) }
}

/// Checks the kernel has landlock of at least [`REQUIRED_ABI`], enabled.
pub(super) fn probe() -> Result<(), Unavailable> {
    let unavailable = |reason: String| Unavailable { feature: Feature::Landlock, reason };
    match kernel_abi() {
        Ok(abi) if abi >= REQUIRED_ABI => Ok(()),
        Ok(abi) => Err(unavailable(format!(
            "this kernel has landlock ABI {abi}; the sandbox needs ABI {REQUIRED_ABI} (Linux 6.2) or later"
        ))),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Err(unavailable(
            "this kernel has landlock but it is disabled: add landlock to the lsm= boot parameter".to_owned(),
        )),
        Err(e) => Err(unavailable(format!(
            "this kernel has no landlock ({e}): it needs Linux 6.2 or later built with CONFIG_SECURITY_LANDLOCK"
        ))),
    }
}

/// Restricts the calling thread (and the threads and processes it starts later) to the
/// policy's paths; refuses TCP unless the policy keeps the network; scopes signals and
/// abstract UNIX sockets to the sandbox.
pub(super) fn restrict(policy: &Policy) -> Result<(), SandboxError> {
    probe()?;
    let error = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(WANTED_ABI)).map_err(error)?;
    if !policy.network {
        ruleset = ruleset.handle_access(AccessNet::from_all(WANTED_ABI)).map_err(error)?;
    }
    let mut ruleset = ruleset.scope(Scope::from_all(WANTED_ABI)).map_err(error)?.create().map_err(error)?;
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let rules = [
        (&policy.read, read),
        (&policy.read_exec, AccessFs::from_read(WANTED_ABI)),
        (&policy.write, AccessFs::from_all(WANTED_ABI)),
    ];
    for (paths, access) in rules {
        for path in paths {
            let fd = PathFd::new(path)
                .map_err(|e| SandboxError::Landlock(format!("cannot open {} for its rule: {e}", path.display())))?;
            // A rule on a file may only carry the rights that apply to files.
            let access = if path.is_dir() { access } else { access & AccessFs::from_file(WANTED_ABI) };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(error)?;
        }
    }
    let status = ruleset.restrict_self().map_err(error)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(SandboxError::Landlock("the kernel did not enforce the rules".to_owned()));
    }
    Ok(())
}
