//! Spool interception (SPEC §5.2): placeholder until the watcher lands.
