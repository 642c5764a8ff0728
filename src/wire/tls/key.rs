//! One direction's record protection: the AEAD key, its IV and the record
//! sequence number (RFC 8446 §5.2-5.3), sealing and opening in place.

use std::io;

use rustls::ConnectionTrafficSecrets;

/// Bytes of an AEAD tag (all three TLS 1.3 AEADs used here).
pub const TAG_LEN: usize = 16;

/// AES-GCM from the library that is faster on this CPU (see
/// [`avx512_aes_gcm`](super::avx512_aes_gcm)); ChaCha20-Poly1305 from ring.
/// ring's key schedule is held inline in its key (544 bytes), so it is boxed.
enum Aead {
    Ring(Box<ring::aead::LessSafeKey>),
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

/// The AEADs of TLS 1.3's cipher suites.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl RecordKey {
    /// The key for `secrets`, whose next record is number `seq`.
    pub fn new(secrets: &ConnectionTrafficSecrets, seq: u64) -> io::Result<RecordKey> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return Err(key_error("cipher not supported by the record layer")),
        };
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| key_error("IV is not 12 bytes"))?;
        RecordKey::with(cipher, key.as_ref(), iv, seq, super::avx512_aes_gcm())
    }

    /// The key from its parts; AES-GCM from aws-lc-rs when `aws_lc`, else ring.
    fn with(
        cipher: Cipher,
        key: &[u8],
        iv: [u8; 12],
        seq: u64,
        aws_lc: bool,
    ) -> io::Result<RecordKey> {
        fn bad_key<E>(_: E) -> io::Error {
            key_error("bad key length")
        }
        let aead = match (cipher, aws_lc) {
            (Cipher::Aes128Gcm | Cipher::Aes256Gcm, true) => {
                let alg = if cipher == Cipher::Aes128Gcm {
                    &aws_lc_rs::aead::AES_128_GCM
                } else {
                    &aws_lc_rs::aead::AES_256_GCM
                };
                Aead::AwsLc(aws_lc_rs::aead::LessSafeKey::new(
                    aws_lc_rs::aead::UnboundKey::new(alg, key).map_err(bad_key)?,
                ))
            }
            _ => {
                let alg = match cipher {
                    Cipher::Aes128Gcm => &ring::aead::AES_128_GCM,
                    Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
                    Cipher::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
                };
                Aead::Ring(Box::new(ring::aead::LessSafeKey::new(
                    ring::aead::UnboundKey::new(alg, key).map_err(bad_key)?,
                )))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record sealed by one library opens with the other: the node and
    /// its clients may run on CPUs that pick differently.
    #[test]
    fn a_record_sealed_by_either_library_opens_with_the_other_and_not_when_altered() {
        let header = [23, 3, 3, 0, 0];
        for (cipher, key_len) in [
            (Cipher::Aes128Gcm, 16),
            (Cipher::Aes256Gcm, 32),
            (Cipher::Chacha20Poly1305, 32),
        ] {
            let key: Vec<u8> = (0..key_len as u8).collect();
            let iv = [7u8; 12];
            for (seal_aws_lc, open_aws_lc) in [(true, false), (false, true), (false, false)] {
                let mut sealer = RecordKey::with(cipher, &key, iv, 5, seal_aws_lc).unwrap();
                let mut opener = RecordKey::with(cipher, &key, iv, 5, open_aws_lc).unwrap();
                let mut altered = RecordKey::with(cipher, &key, iv, 5, open_aws_lc).unwrap();
                let plaintext = b"a record of the log".to_vec();
                let mut record = plaintext.clone();
                let tag = sealer.seal(&header, &mut record).unwrap();
                assert_ne!(record, plaintext, "{cipher:?} sealed");
                record.extend_from_slice(&tag);
                let first = record.clone();
                let mut tampered = record.clone();
                tampered[0] ^= 1;
                let n = opener.open(&header, &mut record).unwrap();
                assert_eq!(
                    &record[..n],
                    plaintext,
                    "{cipher:?} {seal_aws_lc} {open_aws_lc}"
                );
                assert!(altered.open(&header, &mut tampered).is_err());
                // The next record has the next nonce: the same plaintext
                // seals differently, and opens only as record 6.
                let mut second = plaintext.clone();
                let tag = sealer.seal(&header, &mut second).unwrap();
                second.extend_from_slice(&tag);
                assert_ne!(second, first);
                let n = opener.open(&header, &mut second).unwrap();
                assert_eq!(&second[..n], plaintext);
                assert_eq!((sealer.seq(), opener.seq()), (7, 7));
            }
        }
    }

    #[test]
    fn the_last_sequence_number_is_never_used() {
        let mut key =
            RecordKey::with(Cipher::Aes128Gcm, &[1; 16], [0; 12], u64::MAX - 1, false).unwrap();
        let mut record = vec![0u8; 4];
        key.seal(&[23, 3, 3, 0, 20], &mut record).unwrap();
        let err = key.seal(&[23, 3, 3, 0, 20], &mut record).unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
    }
}
