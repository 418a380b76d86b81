//! The stable ABI between a plugin and Kiln's executor.
//!
//! Plugin authors never touch this module: [`export_plugin!`](crate::export_plugin) fills the
//! [`PluginModule`] in, and the executor calls through it. Every function catches panics on the
//! plugin's side and reports them as `RErr` with the panic's message and location.
//!
//! Partials cross this boundary as postcard bytes, the output as a JSON string. The plugin
//! instance is an opaque pointer owned by the executor from `new` to `drop`.

use std::ffi::c_void;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

/// An instance of a plugin, created by [`PluginModule::new`] and freed by
/// [`PluginModule::drop`]. Shared between threads by reference while it lives.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Instance {
    ptr: *const c_void,
}

// SAFETY: an instance points to a `MapReduce` value, which is `Send + Sync`.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl Instance {
    pub(crate) fn from_ptr(ptr: *const c_void) -> Self {
        Instance { ptr }
    }

    pub(crate) fn as_ptr(self) -> *const c_void {
        self.ptr
    }
}

/// The root module of a plugin library: the functions the executor calls.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The API version the plugin was built against.
    pub api_version: RStr<'static>,

    /// Creates an instance from the job's parameters.
    pub new: extern "C" fn(params: RStr<'_>) -> RResult<Instance, RString>,

    /// Whether `combine` merges partials (the plugin implemented `MapReduce::combine`).
    pub combines: extern "C" fn(instance: Instance) -> bool,

    /// Whether the plugin declares it needs line numbers (`MapReduce::LINE_NUMBERS`).
    pub line_numbers: extern "C" fn() -> bool,

    /// Runs one chunk of the file named `file`: its text and the 1-based number of its first
    /// line within that file (0 when unknown); returns the encoded partial.
    pub run: extern "C" fn(
        instance: Instance,
        text: RStr<'_>,
        file: RStr<'_>,
        first_line: u64,
    ) -> RResult<RVec<u8>, RString>,

    /// Merges encoded partials of consecutive chunks into one encoded partial.
    pub combine: extern "C" fn(instance: Instance, partials: RSlice<'_, RSlice<'_, u8>>) -> RResult<RVec<u8>, RString>,

    /// Folds the encoded partials, in input order, into the output as JSON.
    pub aggregate: extern "C" fn(instance: Instance, partials: RSlice<'_, RSlice<'_, u8>>) -> RResult<RString, RString>,

    /// Frees an instance. It must not be used afterwards.
    #[sabi(last_prefix_field)]
    pub drop: extern "C" fn(instance: Instance),

    /// Since 0.1.1: whether the last call on the calling thread that answered `RErr` panicked
    /// (or crashed in a way caught as a panic), rather than returning the plugin's own `Err`.
    /// Kiln retries a panic; an `Err` is the plugin's decision and fails the job at once.
    /// Plugins built against 0.1.0 lack it, and their errors are all taken for panics.
    #[sabi(missing_field(option))]
    pub last_failure_panicked: extern "C" fn() -> bool,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "kiln_plugin";
    const NAME: &'static str = "kiln_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Whether a plugin built against API `plugin` can be loaded by Kiln built against `engine`.
///
/// Versions follow semver: before 1.0 the minor version must match, from 1.0 on the major.
pub fn versions_compatible(plugin: &str, engine: &str) -> bool {
    fn key(version: &str) -> Option<(u64, u64)> {
        let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        Some(if major == 0 { (0, minor) } else { (major, u64::MAX) })
    }
    match (key(plugin), key(engine)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_semver() {
        assert!(versions_compatible("0.1.0", "0.1.7"));
        assert!(!versions_compatible("0.1.0", "0.2.0"));
        assert!(versions_compatible("1.2.0", "1.9.1"));
        assert!(!versions_compatible("1.2.0", "2.0.0"));
        assert!(!versions_compatible("garbage", "0.1.0"));
    }

    #[test]
    fn export_name_is_abi_stables_loader_name() {
        // `export_plugin!` spells the loader's symbol name out, since it cannot use
        // `#[export_root_module]`; this keeps the two in step.
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, "_1as_0lib_1header_0root_bmodule_bloader");
    }
}
