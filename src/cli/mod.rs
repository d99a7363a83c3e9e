//! Subcommands too large for `main.rs`: flags, terminal output and exit codes at the edge.

pub mod demo;
pub mod exit;
pub mod explain;
pub mod noise;
pub mod record;
pub mod sweep;
pub mod values;
