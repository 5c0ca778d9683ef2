//! Statistics for an operator: the events each short-lived session process
//! tells a long-lived aggregator ([`event`]: the format), sent as
//! datagrams that cost the session nothing when nobody listens. The
//! aggregator counts them ([`aggregate`], pure).

pub mod aggregate;
pub mod event;
