//! The POP3 side, free of I/O: command lines, replies, message-body encoding
//! and the session state machine.

pub mod body;
pub mod command;
pub mod lines;
pub mod reply;
pub mod session;
