//! Kiln's engine: everything that turns a user's plugin crate and an input file into a result.
//!
//! # Layout, floor by floor
//! Each module imports only modules on its own floor or below; `engine/tests/architecture.rs`
//! fails when an arrow points up.
//!
//! The ground floor, used by every role and importing none:
//! - [`rules`]: the job's rules: cutting the input into chunks, combine groups, deadlines,
//!   retries.
//! - [`plugin_source`]: reading, validating, packing and hashing plugin crates; the embedded
//!   plugin API and template.
//! - [`rpc`]: the tarpc services between clients, the controller and workers, and their types.
//! - [`owner`]: who a job belongs to, and the owner's directory name on workers.
//! - [`sandbox`]: confining a process before it runs untrusted code (namespaces, landlock,
//!   seccomp, limits).
//! - [`tls`]: the cluster CA, keys that pin it, and TLS on every link.
//! - [`memory`]: allocator settings for the long-running services.
//! - [`errors`]: an error with its causes as one line, each cause once.
//! - [`input`]: a job's input as an ordered list of files: local files, directories and
//!   patterns, URLs read by reference, compressed files.
//! - [`telemetry`]: logs (human or JSON) and Prometheus metrics: the `/metrics` endpoint, the
//!   process's figures, RPC calls counted by method and outcome.
//!
//! The roles, above it:
//! - [`worker`]: the plugin [`worker::builder`] and [`worker::executor`], the job runner that
//!   charges crashes to chunks ([`worker::runner`]), and the daemon's RPC [`worker::service`].
//! - [`controller`]: `kiln controller`, which queues jobs, pushes chunks to workers and stores
//!   results. It never imports [`worker`]: it neither builds nor runs plugin code.
//! - [`local`]: `kiln run-local`, a whole job on this machine: a cluster of one, through the
//!   worker's runner and the job's rules, without RPC.
//! - [`client`]: the client library: submit, watch, cancel and list jobs on a controller.
//!
//! Beside them, not an API: `fuzzing`, the checks behind the fuzz targets in `fuzz/`, which
//! reach into any floor and which nothing imports.

pub mod client;
pub mod controller;
pub mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub mod input;
pub mod local;
pub mod memory;
pub mod owner;
pub mod plugin_source;
pub mod rpc;
pub mod rules;
pub mod sandbox;
pub mod telemetry;
pub mod tls;
pub mod worker;
