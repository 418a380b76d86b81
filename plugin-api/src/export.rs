//! The plugin side of the ABI: the `extern "C"` functions that `export_plugin!` puts in the root
//! module, each a thin wrapper that converts types and turns panics into errors.

use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString, RVec};

use crate::abi::{Instance, PluginModule, PluginModuleRef};
use crate::{API_VERSION, Chunk, MapReduce};

/// [`API_VERSION`] with a NUL terminator, for the plain C version symbol.
pub const VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// Builds the root module for plugin type `P`; called once when the library is loaded.
pub fn root_module<P: MapReduce>() -> PluginModuleRef {
    PluginModule {
        api_version: RStr::from_str(API_VERSION),
        new: new::<P>,
        combines: combines::<P>,
        line_numbers: line_numbers::<P>,
        run: run::<P>,
        combine: combine::<P>,
        aggregate: aggregate::<P>,
        drop: drop_instance::<P>,
    }
    .leak_into_prefix()
}

thread_local! {
    /// The message and location of the last panic on this thread, set by the panic hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the plugin's panic hook (the plugin has its own copy of std, so this does not touch
/// the executor's) with one that records the panic instead of printing it.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            let text = match info.location() {
                Some(at) => format!("panicked at {}:{}:{}: {message}", at.file(), at.line(), at.column()),
                None => format!("panicked: {message}"),
            };
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
        }));
    });
}

/// Runs plugin code, turning a panic into an error carrying its message and location.
fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    install_panic_hook();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(message)) => RErr(message.into()),
        Err(_) => {
            let text = LAST_PANIC.with(|last| last.borrow_mut().take());
            RErr(text.unwrap_or_else(|| "plugin panicked".to_owned()).into())
        }
    }
}

/// # Safety
/// `instance` must come from `new::<P>` and not have been dropped.
unsafe fn plugin<'a, P>(instance: Instance) -> &'a P {
    // SAFETY: guaranteed by the caller.
    unsafe { &*instance.as_ptr().cast::<P>() }
}

fn decode_all<P: MapReduce>(partials: RSlice<'_, RSlice<'_, u8>>) -> Result<Vec<P::Partial>, String> {
    partials
        .iter()
        .enumerate()
        .map(|(i, bytes)| postcard::from_bytes(bytes.as_slice()).map_err(|e| format!("cannot decode partial {i}: {e}")))
        .collect()
}

fn encode<T: serde::Serialize>(partial: &T) -> Result<RVec<u8>, String> {
    postcard::to_allocvec(partial).map(RVec::from).map_err(|e| format!("cannot encode partial: {e}"))
}

extern "C" fn new<P: MapReduce>(params: RStr<'_>) -> RResult<Instance, RString> {
    guard(|| {
        let plugin = P::new(params.as_str())?;
        Ok(Instance::from_ptr(Box::into_raw(Box::new(plugin)).cast::<c_void>()))
    })
}

extern "C" fn run<P: MapReduce>(
    instance: Instance,
    text: RStr<'_>,
    file: RStr<'_>,
    first_line: u64,
) -> RResult<RVec<u8>, RString> {
    guard(|| {
        // SAFETY: the executor passes instances it got from `new` and has not dropped.
        let plugin = unsafe { plugin::<P>(instance) };
        encode(&plugin.run(&Chunk::in_file(text.as_str(), file.as_str(), first_line))?)
    })
}

extern "C" fn line_numbers<P: MapReduce>() -> bool {
    P::LINE_NUMBERS
}

extern "C" fn combines<P: MapReduce>(instance: Instance) -> bool {
    // SAFETY: as in `run`.
    let plugin = unsafe { plugin::<P>(instance) };
    matches!(guard(|| Ok(plugin.combine(Vec::new()).is_some())), ROk(true))
}

extern "C" fn combine<P: MapReduce>(
    instance: Instance,
    partials: RSlice<'_, RSlice<'_, u8>>,
) -> RResult<RVec<u8>, RString> {
    guard(|| {
        // SAFETY: as in `run`.
        let plugin = unsafe { plugin::<P>(instance) };
        match plugin.combine(decode_all::<P>(partials)?) {
            Some(merged) => encode(&merged?),
            None => Err("this plugin does not implement combine".to_owned()),
        }
    })
}

extern "C" fn aggregate<P: MapReduce>(
    instance: Instance,
    partials: RSlice<'_, RSlice<'_, u8>>,
) -> RResult<RString, RString> {
    guard(|| {
        // SAFETY: as in `run`.
        let plugin = unsafe { plugin::<P>(instance) };
        let output = plugin.aggregate(decode_all::<P>(partials)?)?;
        serde_json::to_string(&output).map(RString::from).map_err(|e| format!("cannot encode output as JSON: {e}"))
    })
}

extern "C" fn drop_instance<P: MapReduce>(instance: Instance) {
    // A panic in a plugin's `Drop` must not unwind across the boundary; it is recorded and lost.
    let _ = guard(|| {
        // SAFETY: the executor drops each instance once, after its last use.
        drop(unsafe { Box::from_raw(instance.as_ptr().cast::<P>().cast_mut()) });
        Ok(())
    });
}
