//! The CBOR codec: the only module in AgentMesh that names the CBOR library.
//!
//! Values are encoded as canonical-enough CBOR (struct fields in declaration
//! order, as serde emits them). Decoding refuses trailing bytes and inputs over
//! the caller's size limit, and never panics on malformed input.

use serde::{de::DeserializeOwned, Serialize};

/// Errors from encoding or decoding CBOR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is larger than the decoder accepts.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// The bytes are not valid CBOR for the expected type.
    #[error("malformed CBOR: {0}")]
    Malformed(#[source] serde_cbor::Error),
    /// The value could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(#[source] serde_cbor::Error),
    /// The bytes decode, but are not the one encoding this codec writes for
    /// the value (e.g. a field name sent as a byte string, a long-form
    /// length): refused where the exact bytes are signed, hashed or compared.
    #[error("non-canonical CBOR encoding")]
    NonCanonical,
}

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(value).map_err(CodecError::Encode)
}

/// Decodes a `T` from `bytes`, refusing inputs longer than `max` bytes and any
/// trailing data after the value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    serde_cbor::from_slice(bytes).map_err(CodecError::Malformed)
}

/// Decodes like [`decode`], and then refuses any input that is not exactly
/// the encoding [`encode`] gives for the decoded value. Use it for artifacts
/// whose bytes are signed, hashed or logged, so that one value has one
/// encoding on the wire.
pub fn decode_canonical<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    max: usize,
) -> Result<T, CodecError> {
    let value: T = decode(bytes, max)?;
    if encode(&value)? != bytes {
        return Err(CodecError::NonCanonical);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        #[serde(with = "serde_bytes_compat")]
        b: Vec<u8>,
        c: String,
    }

    mod serde_bytes_compat {
        pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<u8>, D::Error> {
            let v: serde_cbor::Value = serde::Deserialize::deserialize(d)?;
            match v {
                serde_cbor::Value::Bytes(b) => Ok(b),
                _ => Err(serde::de::Error::custom("expected bytes")),
            }
        }
    }

    #[test]
    fn snapshot_is_stable() {
        let v = Sample {
            a: 1,
            b: vec![0xab],
            c: "x".into(),
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(hex(&bytes), "a3616101616241ab61636178");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn refuses_trailing_and_oversized() {
        let mut bytes = encode(&5u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes, 100),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            decode::<u32>(&[0u8; 10], 4),
            Err(CodecError::TooLarge { len: 10, max: 4 })
        ));
    }

    #[test]
    fn canonical_decoding_refuses_other_encodings_of_the_same_value() {
        let v = Sample {
            a: 1,
            b: vec![0xab],
            c: "x".into(),
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(decode_canonical::<Sample>(&bytes, 100).unwrap(), v);
        // The field name "a" as a byte string instead of a text string.
        let mut key_as_bytes = bytes.clone();
        key_as_bytes[1] = 0x41;
        assert_eq!(decode::<Sample>(&key_as_bytes, 100).unwrap(), v);
        assert!(matches!(
            decode_canonical::<Sample>(&key_as_bytes, 100),
            Err(CodecError::NonCanonical)
        ));
        // The integer 1 in its one-byte-argument long form.
        let mut long_form = bytes[..3].to_vec();
        long_form.extend_from_slice(&[0x18, 0x01]);
        long_form.extend_from_slice(&bytes[4..]);
        assert_eq!(decode::<Sample>(&long_form, 100).unwrap(), v);
        assert!(matches!(
            decode_canonical::<Sample>(&long_form, 100),
            Err(CodecError::NonCanonical)
        ));
    }

    proptest! {
        #[test]
        fn round_trip(a: u64, b: Vec<u8>, c: String) {
            let v = Sample { a, b, c };
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(decode::<Sample>(&bytes, usize::MAX).unwrap(), v);
        }

        #[test]
        fn random_bytes_never_panic(bytes: Vec<u8>) {
            let _ = decode::<Sample>(&bytes, 1 << 16);
        }
    }
}
