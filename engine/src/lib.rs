//! Kiln's engine: everything that turns a user's plugin crate and an input file into a result.
//!
//! # Layout
//! - [`chunk`]: cutting a text input into chunks of whole lines, checking it is UTF-8.
//! - [`worker`]: the worker's parts: the plugin [`worker::builder`] and [`worker::executor`].
//! - [`local`]: `kiln run-local`, a whole job on this machine with no cluster.
//! - [`rpc`]: the tarpc services between clients, the controller and workers.

pub mod chunk;
pub mod local;
pub mod rpc;
pub mod worker;
