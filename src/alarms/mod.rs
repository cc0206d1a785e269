//! Alarm receivers and alarm cases (SPEC §8–9): the Sur-Gard automation protocol parsed
//! sans-I/O (`frame`), one reader task per serial receiver with ACK/NAK, heartbeats and back-off
//! (`receiver`), and the case lifecycle (`cases`): opened by alarm-class events, joined by later
//! ones, closed by an operator or after `alarms.max_open`. Never panics on a bad frame; never
//! holds an unbounded buffer.

pub mod cases;
pub mod frame;
pub mod receiver;
