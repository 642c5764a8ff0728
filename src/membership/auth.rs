//! The envelope around every gossip datagram: a version byte and, with a
//! cluster key, a truncated HMAC-SHA256 tag.
//!
//! Layout: `[version: 1][foca packet][tag: 16 if keyed]`. The tag covers the
//! version byte and the packet. HMAC-SHA256 authenticates without hiding the
//! contents: gossip carries names and addresses, not secrets, and an
//! authenticator is all that keeps a stranger from joining or declaring
//! members down. Verification is constant-time (`verify_truncated_left`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Version byte of an unauthenticated packet.
const VERSION_PLAIN: u8 = 0xA1;
/// Version byte of a packet followed by an HMAC tag.
const VERSION_HMAC: u8 = 0xA2;
/// Bytes of the HMAC-SHA256 output kept: 128 bits is plenty for a tag
/// checked online.
pub(crate) const TAG_LEN: usize = 16;
/// Worst-case bytes the envelope adds to a foca packet.
pub(crate) const ENVELOPE_OVERHEAD: usize = 1 + TAG_LEN;

/// Why an incoming datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// Too short, unknown version: not one of ours.
    #[error("malformed envelope")]
    Malformed,
    /// Missing, wrong or unverifiable tag.
    #[error("bad authentication tag")]
    BadAuth,
}

/// Seals outgoing and opens incoming packets for one cluster key (or none).
#[derive(Clone)]
pub(crate) struct PacketAuth {
    /// Keyed MAC state, cloned per packet; `None` means unauthenticated.
    mac: Option<Hmac<Sha256>>,
}

impl PacketAuth {
    /// An authenticator for `key`, or a pass-through without one.
    pub fn new(key: Option<&[u8]>) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = key.and_then(|k| Hmac::<Sha256>::new_from_slice(k).ok());
        Self { mac }
    }

    /// Writes the envelope around `payload` into `out` (cleared first).
    pub fn seal(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match &self.mac {
            None => {
                out.push(VERSION_PLAIN);
                out.extend_from_slice(payload);
            }
            Some(mac) => {
                out.push(VERSION_HMAC);
                out.extend_from_slice(payload);
                let mut mac = mac.clone();
                mac.update(out);
                let tag = mac.finalize().into_bytes();
                out.extend_from_slice(&tag[..TAG_LEN]);
            }
        }
    }

    /// Checks the envelope and returns the foca packet inside it.
    pub fn open<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], OpenError> {
        let Some((&version, _)) = packet.split_first() else {
            return Err(OpenError::Malformed);
        };
        match (version, &self.mac) {
            (VERSION_PLAIN, None) => Ok(&packet[1..]),
            (VERSION_HMAC, Some(mac)) => {
                if packet.len() < ENVELOPE_OVERHEAD {
                    return Err(OpenError::Malformed);
                }
                let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
                let mut mac = mac.clone();
                mac.update(signed);
                mac.verify_truncated_left(tag)
                    .map_err(|_| OpenError::BadAuth)?;
                Ok(&signed[1..])
            }
            // A keyed node refuses plain packets and vice versa: mixing
            // them would let an unkeyed node into a keyed cluster.
            (VERSION_PLAIN, Some(_)) | (VERSION_HMAC, None) => Err(OpenError::BadAuth),
            _ => Err(OpenError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef";

    #[test]
    fn keyed_round_trip_and_tamper_detection() {
        let auth = PacketAuth::new(Some(KEY));
        let mut out = Vec::new();
        auth.seal(b"hello", &mut out);
        assert_eq!(out.len(), 5 + ENVELOPE_OVERHEAD);
        assert_eq!(auth.open(&out), Ok(&b"hello"[..]));

        let mut flipped = out.clone();
        flipped[2] ^= 1;
        assert_eq!(auth.open(&flipped), Err(OpenError::BadAuth));
        assert_eq!(auth.open(&out[..out.len() - 1]), Err(OpenError::BadAuth));
        assert_eq!(auth.open(&out[..3]), Err(OpenError::Malformed));
        assert_eq!(auth.open(&[]), Err(OpenError::Malformed));
    }

    #[test]
    fn wrong_key_and_mixed_modes_are_bad_auth() {
        let auth = PacketAuth::new(Some(KEY));
        let other = PacketAuth::new(Some(b"fedcba9876543210"));
        let plain = PacketAuth::new(None);
        let mut out = Vec::new();
        other.seal(b"hello", &mut out);
        assert_eq!(auth.open(&out), Err(OpenError::BadAuth));
        assert_eq!(plain.open(&out), Err(OpenError::BadAuth));
        plain.seal(b"hello", &mut out);
        assert_eq!(auth.open(&out), Err(OpenError::BadAuth));
        assert_eq!(plain.open(&out), Ok(&b"hello"[..]));
        assert_eq!(plain.open(&[0x00, 1, 2]), Err(OpenError::Malformed));
    }
}
