//! The POP3 side, free of I/O: command lines, replies, message-body encoding
//! and the session state machine, split by state.

pub mod auth;
pub mod body;
pub mod command;
pub mod lines;
pub mod reply;
pub mod retrieval;
pub mod session;
pub mod transaction;
