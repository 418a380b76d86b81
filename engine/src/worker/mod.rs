//! The worker role: building plugins, running their code in executor processes, and the
//! worker daemon's RPC service.

pub mod builder;
pub mod executor;
pub mod service;
