//! One direction's record protection: the AEAD key, its IV and the record
//! sequence number (RFC 8446 §5.2-5.3), sealing and opening in place.

use std::io;

use rustls::ConnectionTrafficSecrets;

/// Bytes of an AEAD tag (all three TLS 1.3 AEADs used here).
pub const TAG_LEN: usize = 16;

/// AES-GCM from the library that is faster on this CPU (see
/// [`avx512_aes_gcm`](super::avx512_aes_gcm)); ChaCha20-Poly1305 from ring.
enum Aead {
    Ring(ring::aead::LessSafeKey),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

/// The key of one direction of a TLS 1.3 connection and the sequence number
/// of its next record.
pub struct RecordKey {
    aead: Aead,
    iv: [u8; 12],
    seq: u64,
}

fn key_error(what: &str) -> io::Error {
    io::Error::other(format!("TLS traffic key: {what}"))
}

impl RecordKey {
    /// The key for `secrets`, whose next record is number `seq`.
    pub fn new(secrets: &ConnectionTrafficSecrets, seq: u64) -> io::Result<RecordKey> {
        let (key, iv, ring_alg, aws_alg) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (
                key,
                iv,
                &ring::aead::AES_128_GCM,
                Some(&aws_lc_rs::aead::AES_128_GCM),
            ),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (
                key,
                iv,
                &ring::aead::AES_256_GCM,
                Some(&aws_lc_rs::aead::AES_256_GCM),
            ),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (key, iv, &ring::aead::CHACHA20_POLY1305, None)
            }
            _ => return Err(key_error("cipher not supported by the record layer")),
        };
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| key_error("IV is not 12 bytes"))?;
        let aead = match aws_alg {
            Some(alg) if super::avx512_aes_gcm() => Aead::AwsLc(aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(alg, key.as_ref())
                    .map_err(|_| key_error("bad key length"))?,
            )),
            _ => Aead::Ring(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(ring_alg, key.as_ref())
                    .map_err(|_| key_error("bad key length"))?,
            )),
        };
        Ok(RecordKey { aead, iv, seq })
    }

    /// The sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The per-record nonce: the IV XORed with the sequence number, which
    /// then moves on; a sequence number is never used twice.
    fn next_nonce(&mut self) -> io::Result<[u8; 12]> {
        if self.seq == u64::MAX {
            return Err(key_error("record sequence numbers exhausted"));
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(nonce)
    }

    /// Encrypts `in_out` in place under the record header `aad`; returns the tag.
    pub fn seal(&mut self, aad: &[u8], in_out: &mut [u8]) -> io::Result<[u8; TAG_LEN]> {
        let nonce = self.next_nonce()?;
        let tag = match &self.aead {
            Aead::Ring(key) => key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(aad),
                    in_out,
                )
                .map(|t| <[u8; TAG_LEN]>::try_from(t.as_ref()))
                .map_err(|_| key_error("seal failed"))?,
            Aead::AwsLc(key) => key
                .seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    in_out,
                )
                .map(|t| <[u8; TAG_LEN]>::try_from(t.as_ref()))
                .map_err(|_| key_error("seal failed"))?,
        };
        tag.map_err(|_| key_error("tag is not 16 bytes"))
    }

    /// Decrypts `in_out` (ciphertext and tag) in place under the record
    /// header `aad`; returns the plaintext's length. A record that fails
    /// authentication is an `InvalidData` error and is never served.
    pub fn open(&mut self, aad: &[u8], in_out: &mut [u8]) -> io::Result<usize> {
        let nonce = self.next_nonce()?;
        let opened = match &self.aead {
            Aead::Ring(key) => key
                .open_in_place(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(aad),
                    in_out,
                )
                .map(|p| p.len())
                .ok(),
            Aead::AwsLc(key) => key
                .open_in_place(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    in_out,
                )
                .map(|p| p.len())
                .ok(),
        };
        opened.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS record failed authentication (bad_record_mac)",
            )
        })
    }
}
