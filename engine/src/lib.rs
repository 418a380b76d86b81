//! Kiln's engine: everything that turns a user's plugin crate and an input file into a result.
//!
//! # Layout
//! - [`chunk`]: cutting a text input into chunks of whole lines, checking it is UTF-8.
//! - [`controller`]: `kiln controller`, which queues jobs, pushes chunks to workers and stores results.
//! - [`worker`]: the worker: the plugin [`worker::builder`] and [`worker::executor`], and the
//!   daemon's RPC [`worker::service`].
//! - [`local`]: `kiln run-local`, a whole job on this machine with no cluster.
//! - [`rpc`]: the tarpc services between clients, the controller and workers.
//! - [`client`]: the client library: submit, watch, cancel and list jobs on a controller.
//! - [`memory`]: allocator settings for the long-running services.
//! - [`owner`]: who a job belongs to, and the owner's directory name on workers.
//! - [`sandbox`]: confining a process before it runs untrusted code (namespaces, landlock,
//!   seccomp, limits).
//! - [`tls`]: the cluster CA, keys that pin it, and TLS on every link.

pub mod chunk;
pub mod client;
pub mod controller;
pub mod local;
pub mod memory;
pub mod owner;
pub mod rpc;
pub mod sandbox;
pub mod tls;
pub mod worker;
