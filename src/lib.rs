//! callguard
