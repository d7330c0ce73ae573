//! Trust: what the registry vouches for and what peers can prove.
//!
//! - [`cert`]: tier certificates and their chains, revocations.
//! - [`credentials`]: what an agent presents with a KNOCK (its chain, the
//!   log inclusion proof, a reputation attestation), and their check.
//! - [`reputation`]: the score formula and its inputs.
//! - [`receipts`]: session receipts both sides sign, the input to feedback.
//! - [`transparency`]: the registry's append-only log (RFC 9162 Merkle
//!   tree), its signed heads and proofs.

pub mod cert;
pub mod credentials;
pub mod receipts;
pub mod reputation;
pub mod transparency;
