//! The stable ABI between a plugin and Kiln's executor.
//!
//! Plugin authors never touch this module: [`export_plugin!`](crate::export_plugin) fills the
//! [`PluginModule`] in, and the executor calls through it. Every function catches panics on the
//! plugin's side and reports them as `RErr` with the panic's message and location.
//!
//! Partials cross this boundary as postcard bytes, the output as JSON: a string from
//! `aggregate`, or written piece by piece into the executor's [`OutputSink`] by
//! `aggregate_streamed` (since 0.1.2), which also takes the partials one at a time from a
//! [`PartialSource`], and by `aggregate_into` (since 0.1.3), which is also told the input's file
//! count and calls the plugin's streaming aggregate when it has one. The plugin instance is an
//! opaque pointer owned by the executor from `new` to `drop`.

use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
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

    /// Since 0.1.2: `aggregate`, taking the partials one at a time from `partials` (each one's
    /// bytes freed once decoded) and writing the output's JSON into `output` as it is encoded,
    /// so that neither the encoded partials nor the JSON are ever whole in the executor's
    /// memory beside the plugin's own values. Plugins built against earlier versions lack it,
    /// and the executor calls `aggregate`.
    #[sabi(missing_field(option))]
    pub aggregate_streamed:
        extern "C" fn(instance: Instance, partials: PartialSource<'_>, output: OutputSink<'_>) -> RResult<(), RString>,

    /// Since 0.1.3: `aggregate_streamed`, told how many of the input's files have chunks
    /// (`Partials::input_files`), which a streaming aggregate needs before its first partial.
    /// It calls `MapReduce::aggregate_into` when the plugin sets `STREAMS_OUTPUT`, and
    /// `MapReduce::aggregate` otherwise. Plugins built against earlier versions lack it, and the
    /// executor calls `aggregate_streamed` (or `aggregate`).
    #[sabi(missing_field(option))]
    pub aggregate_into: extern "C" fn(
        instance: Instance,
        input_files: u64,
        partials: PartialSource<'_>,
        output: OutputSink<'_>,
    ) -> RResult<(), RString>,
}

/// The partials of an aggregate as the executor hands them over: one at a time, in input
/// order, each an allocation of its own that the plugin frees once it has decoded it.
///
/// Made by the executor around its own state, which lives for the call (`'a`).
#[repr(C)]
#[derive(StableAbi)]
pub struct PartialSource<'a> {
    /// How many partials `next` hands over in all.
    pub count: u64,
    state: *mut c_void,
    next: extern "C" fn(state: *mut c_void) -> RResult<ROption<RVec<u8>>, RString>,
    _state: PhantomData<&'a mut c_void>,
}

impl<'a> PartialSource<'a> {
    /// A source of `count` partials, each answered by `next(state)`: `RSome` with the partial's
    /// bytes, `RNone` once all were handed over, `RErr` when they could not be read.
    ///
    /// # Safety
    /// `next` must be safe to call with `state` for as long as `'a`, from the calling thread.
    pub unsafe fn new(
        count: u64,
        state: &'a mut c_void,
        next: extern "C" fn(state: *mut c_void) -> RResult<ROption<RVec<u8>>, RString>,
    ) -> Self {
        PartialSource { count, state, next, _state: PhantomData }
    }

    /// The next partial's bytes, `None` once all were handed over, or why the executor could
    /// not give it.
    pub fn next_partial(&mut self) -> Result<Option<RVec<u8>>, String> {
        (self.next)(self.state).into_result().map(ROption::into_option).map_err(RString::into_string)
    }
}

/// Where an aggregate writes its output's JSON: the executor sends each write on as pieces of
/// the answer. A plain [`std::io::Write`] for the plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct OutputSink<'a> {
    state: *mut c_void,
    write: extern "C" fn(state: *mut c_void, bytes: RSlice<'_, u8>) -> RResult<(), RString>,
    _state: PhantomData<&'a mut c_void>,
}

impl<'a> OutputSink<'a> {
    /// A sink that gives every write to `write(state, bytes)`, which answers `RErr` when the
    /// bytes could not be sent (the plugin then stops and fails the call).
    ///
    /// # Safety
    /// `write` must be safe to call with `state` for as long as `'a`, from the calling thread.
    pub unsafe fn new(
        state: &'a mut c_void,
        write: extern "C" fn(state: *mut c_void, bytes: RSlice<'_, u8>) -> RResult<(), RString>,
    ) -> Self {
        OutputSink { state, write, _state: PhantomData }
    }
}

impl std::io::Write for OutputSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        (self.write)(self.state, RSlice::from_slice(bytes))
            .into_result()
            .map_err(|e| std::io::Error::other(e.into_string()))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
