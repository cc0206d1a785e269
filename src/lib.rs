//! callguard: privacy gateway for call recordings. Start with ARCHITECTURE.md.
//! Modules are listed in reading order; each module's `//!` says what it owns.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod access;
pub mod alarms;
pub mod api;
pub mod audit;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod daemon;
pub mod ingest;
pub mod keyring;
pub mod metrics;
pub mod objections;
pub mod pki;
pub mod retention;
pub mod vault;

/// Entry points for `tests/fuzz`. Not API.
#[doc(hidden)]
pub mod fuzzing;
