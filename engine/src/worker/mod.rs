//! The worker role: building plugins and running their code in executor processes.

pub mod builder;
pub mod executor;
