//! What protects a message and a key at rest.
//!
//! - [`envelope`]: the signed, encrypted envelope every message travels in.
//! - [`keystore`]: the identity key encrypted at rest (Argon2id and
//!   XChaCha20-Poly1305).
//!
//! - [`session`]: the Olm sessions (3DH + Double Ratchet) that encrypt
//!   envelope bodies, and the store that keeps them.

pub mod envelope;
pub mod keystore;
pub mod session;
