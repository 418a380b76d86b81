//! The worker role: building plugins ([`builder`]), running their code in executor processes
//! ([`executor`]), one job's calls with crashes charged to their chunks ([`runner`]), and the
//! worker daemon's RPC service ([`service`]).

pub mod builder;
pub mod executor;
pub mod runner;
pub mod service;
