//! The node's decisions without I/O: when to publish the card, what the
//! network says about our reachability, which relays to use, and how a
//! link delivers its messages (window, back-off, mailbox fallback).
//!
//! Each core is a plain state machine in the style of quinn-proto: inputs
//! are `handle_*` methods, outputs are `poll_*` methods or queries, and
//! anything that depends on time takes `now` from the caller. No core
//! reads the clock, spawns, sleeps or touches the libp2p swarm, so unit
//! tests, property tests and simulations drive them directly.

pub mod delivery;
pub(crate) mod publish;
pub(crate) mod reachability;
pub(crate) mod relays;
