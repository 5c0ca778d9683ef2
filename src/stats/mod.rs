//! Statistics for an operator: the events each short-lived session process
//! tells a long-lived aggregator ([`event`]: the format), sent as
//! datagrams that cost the session nothing when nobody listens.

pub mod emit;
pub mod event;
