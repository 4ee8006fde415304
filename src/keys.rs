//! Canonical join-key encoding.
//!
//! Every node must turn the same logical key into the same bytes before
//! hashing, or keys silently fail to meet. The rules:
//!
//! * a **string** part is trimmed of surrounding white space and put in Unicode
//!   NFC; it is encoded as tag `0x01`, `u32` big-endian byte length, UTF-8 bytes;
//! * an **integer** part is a signed 64-bit value, encoded as tag `0x02` and
//!   8 bytes big-endian two's complement;
//! * a key is the concatenation of its parts (a one-part key is a tuple of one).
//!
//! A grouped analysis appends a group part (tag `0x03`, the group's index as
//! `u32` big-endian). Dummy rows (padding) use tag `0xFF` followed by random
//! bytes, so a dummy can never collide with a real key's encoding.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// The declared type of one part of the join key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// A text value (trimmed, NFC).
    String,
    /// A signed 64-bit integer.
    Integer,
}

/// One part of a key value, borrowed from the caller's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart<'a> {
    /// A text part.
    Str(&'a str),
    /// An integer part.
    Int(i64),
}

impl KeyPart<'_> {
    /// The declared type this part satisfies.
    pub fn key_type(&self) -> KeyType {
        match self {
            KeyPart::Str(_) => KeyType::String,
            KeyPart::Int(_) => KeyType::Integer,
        }
    }
}

const TAG_STRING: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
/// Tag of the group part that grouped analyses append to every key.
pub const TAG_GROUP: u8 = 0x03;
/// Tag that starts a dummy row's key; never produced by [`encode_key`].
pub const TAG_DUMMY: u8 = 0xFF;

/// Appends the group part (tag `0x03`, `u32` big-endian group index) that a
/// grouped analysis adds to every key, so that a key meets only the copy of
/// itself in the grouping party's group.
pub fn append_group(key: &mut Vec<u8>, group: u32) {
    key.push(TAG_GROUP);
    key.extend_from_slice(&group.to_be_bytes());
}

/// Appends the canonical encoding of one key part to `out`.
pub fn encode_part(part: KeyPart<'_>, out: &mut Vec<u8>) {
    match part {
        KeyPart::Str(s) => {
            out.push(TAG_STRING);
            let s = s.trim();
            if s.is_ascii() {
                // ASCII is its own NFC form: no allocation.
                crate::session::put_lp(out, s.as_bytes());
            } else {
                let norm: String = s.nfc().collect();
                crate::session::put_lp(out, norm.as_bytes());
            }
        }
        KeyPart::Int(v) => {
            out.push(TAG_INTEGER);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// The canonical encoding of a whole key.
pub fn encode_key(parts: &[KeyPart<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * parts.len());
    for p in parts {
        encode_part(*p, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_trimmed_and_nfc() {
        // "é" precomposed vs "e" + combining acute accent.
        let a = encode_key(&[KeyPart::Str("  caf\u{e9} ")]);
        let b = encode_key(&[KeyPart::Str("cafe\u{301}")]);
        assert_eq!(a, b);
    }

    #[test]
    fn tuples_are_unambiguous() {
        let a = encode_key(&[KeyPart::Str("ab"), KeyPart::Str("c")]);
        let b = encode_key(&[KeyPart::Str("a"), KeyPart::Str("bc")]);
        assert_ne!(a, b);
        let s = encode_key(&[KeyPart::Str("1")]);
        let i = encode_key(&[KeyPart::Int(1)]);
        assert_ne!(s, i);
        assert_eq!(encode_key(&[KeyPart::Int(258)])[1..], 258i64.to_be_bytes());
    }
}
