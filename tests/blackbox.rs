//! The one black-box test binary: every test runs the real `callguard` binary with generated
//! certificates and files (see `support`).

#![allow(unreachable_pub)]

mod support;

mod alarms;
mod api_tls;
mod cli_admin;
mod crash;
mod crash_campaign;
mod dev_instance;
mod disk_full;
mod ingest_http;
mod ingest_spool;
mod retention;
mod security;
mod tidy;
