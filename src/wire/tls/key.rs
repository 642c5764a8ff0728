//! One direction's record protection: the AEAD key, its IV and the record
//! sequence number (RFC 8446 §5.2-5.3): records sealed from the writer's
//! bytes into the send buffer, and opened into the reader's buffer or in
//! place.

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

    /// Seals `data` followed by the inner `content_type` under the record
    /// header `aad` into `out` (ciphertext, then tag: `data.len() + 1 +
    /// TAG_LEN` bytes). aws-lc-rs encrypts from `data` straight into `out`,
    /// one pass over the bytes; ring copies them there first and seals in
    /// place.
    pub fn seal_into(
        &mut self,
        aad: &[u8],
        data: &[u8],
        content_type: u8,
        out: &mut [u8],
    ) -> io::Result<()> {
        let n = data.len();
        if out.len() != n + 1 + TAG_LEN {
            return Err(key_error("sealed record of the wrong size"));
        }
        let nonce = self.next_nonce()?;
        match &self.aead {
            Aead::Ring(key) => {
                let (ciphertext, tag_out) = out.split_at_mut(n + 1);
                ciphertext[..n].copy_from_slice(data);
                ciphertext[n] = content_type;
                let tag = key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        ciphertext,
                    )
                    .map_err(|_| key_error("seal failed"))?;
                tag_out.copy_from_slice(tag.as_ref());
            }
            Aead::AwsLc(key) => {
                let (ciphertext, type_and_tag) = out.split_at_mut(n);
                key.seal_out_of_place_scatter(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    data,
                    ciphertext,
                    &[content_type],
                    type_and_tag,
                )
                .map_err(|_| key_error("seal failed"))?
            }
        }
        Ok(())
    }

    /// Opens `body` (ciphertext and tag) under the record header `aad` into
    /// `out` (`body.len() - TAG_LEN` bytes). aws-lc-rs decrypts straight
    /// into `out`; ring copies the ciphertext there and opens it in place.
    /// On failure (`bad_record_mac`, as [`RecordKey::open`]) `out` holds
    /// unauthenticated bytes: the caller must not hand any of them on.
    pub fn open_into(&mut self, aad: &[u8], body: &[u8], out: &mut [u8]) -> io::Result<()> {
        let Some(n) = body.len().checked_sub(TAG_LEN).filter(|&n| n == out.len()) else {
            return Err(key_error("opened record of the wrong size"));
        };
        let nonce = self.next_nonce()?;
        let (ciphertext, tag) = body.split_at(n);
        let opened = match &self.aead {
            Aead::Ring(key) => {
                out.copy_from_slice(ciphertext);
                let tag = <[u8; TAG_LEN]>::try_from(tag).map_err(|_| bad_record_mac())?;
                key.open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(aad),
                    ring::aead::Tag::from(tag),
                    out,
                    0..,
                )
                .is_ok()
            }
            Aead::AwsLc(key) => key
                .open_separate_gather(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    ciphertext,
                    tag,
                    out,
                )
                .is_ok(),
        };
        if opened {
            Ok(())
        } else {
            Err(bad_record_mac())
        }
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
        opened.ok_or_else(bad_record_mac)
    }
}

/// A record that fails authentication: never served.
fn bad_record_mac() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "TLS record failed authentication (bad_record_mac)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record sealed by one library opens with the other, in place or
    /// into another buffer: the node and its clients may run on CPUs that
    /// pick differently.
    #[test]
    fn a_record_sealed_by_either_library_opens_with_the_other_and_not_when_altered() {
        let header = [23, 3, 3, 0, 0];
        let data = b"a record of the log";
        let inner = [data.as_slice(), &[23]].concat();
        for (cipher, key_len) in [
            (Cipher::Aes128Gcm, 16),
            (Cipher::Aes256Gcm, 32),
            (Cipher::Chacha20Poly1305, 32),
        ] {
            let key: Vec<u8> = (0..key_len as u8).collect();
            let iv = [7u8; 12];
            for (seal_aws_lc, open_aws_lc) in
                [(true, false), (false, true), (false, false), (true, true)]
            {
                let what = format!(
                    "{cipher:?} sealed by aws-lc {seal_aws_lc}, opened by aws-lc {open_aws_lc}"
                );
                let with = |aws_lc| RecordKey::with(cipher, &key, iv, 5, aws_lc).unwrap();
                let (mut sealer, mut opener) = (with(seal_aws_lc), with(open_aws_lc));
                let mut first = vec![0u8; data.len() + 1 + TAG_LEN];
                sealer.seal_into(&header, data, 23, &mut first).unwrap();
                assert_ne!(&first[..data.len()], data, "{what}");
                let mut tampered = first.clone();
                tampered[0] ^= 1;
                let mut in_place = first.clone();
                let n = opener.open(&header, &mut in_place).unwrap();
                assert_eq!(&in_place[..n], inner, "{what}");
                assert!(
                    with(open_aws_lc)
                        .open(&header, &mut tampered.clone())
                        .is_err()
                );
                let mut out = vec![0u8; inner.len()];
                let err = with(open_aws_lc).open_into(&header, &tampered, &mut out);
                assert!(err.is_err(), "{what}");
                // The next record has the next nonce: the same plaintext
                // seals differently, and opens only as record 6.
                let mut second = vec![0u8; first.len()];
                sealer.seal_into(&header, data, 23, &mut second).unwrap();
                assert_ne!(second, first, "{what}");
                assert!(
                    with(open_aws_lc)
                        .open_into(&header, &second, &mut out)
                        .is_err()
                );
                opener.open_into(&header, &second, &mut out).unwrap();
                assert_eq!(out, inner, "{what}");
                assert_eq!((sealer.seq(), opener.seq()), (7, 7));
            }
        }
    }

    #[test]
    fn a_record_of_the_wrong_size_is_refused_before_any_crypto() {
        let mut key = RecordKey::with(Cipher::Aes128Gcm, &[1; 16], [0; 12], 0, true).unwrap();
        assert!(key.seal_into(&[], b"abc", 23, &mut [0; 19]).is_err());
        assert!(key.open_into(&[], &[0; 20], &mut [0; 3]).is_err());
        assert!(key.open_into(&[], &[0; 15], &mut []).is_err());
        assert_eq!(key.seq(), 0, "no sequence number spent");
    }

    #[test]
    fn the_last_sequence_number_is_never_used() {
        let mut key =
            RecordKey::with(Cipher::Aes128Gcm, &[1; 16], [0; 12], u64::MAX - 1, false).unwrap();
        let mut record = vec![0u8; 4 + 1 + TAG_LEN];
        key.seal_into(&[23, 3, 3, 0, 21], &[0; 4], 23, &mut record)
            .unwrap();
        let err = key
            .seal_into(&[23, 3, 3, 0, 21], &[0; 4], 23, &mut record)
            .unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
    }
}
