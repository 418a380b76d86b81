//! The job's rules, on the ground floor: how an input is cut into chunks, how partials are
//! grouped for `combine`, how long calls may take, how often a chunk is tried, what limits a job may set. The controller,
//! the worker and run-local all read them here, so a rule changed here changes every path;
//! this module imports no role (`controller`, `worker`, `client`, `local`).

pub mod batch;
pub mod chunk;
pub mod combine;
pub mod deadlines;
pub mod limits;
pub mod retry;
