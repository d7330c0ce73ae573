//! What protects a message and a key at rest.
//!
//! - [`envelope`]: the signed, encrypted envelope every message travels in.
//! - [`keystore`]: the identity key encrypted at rest (Argon2id and
//!   XChaCha20-Poly1305).
//!
//! The Olm sessions that encrypt envelope bodies are in
//! [`session`](crate::session).

pub mod envelope;
pub mod keystore;
