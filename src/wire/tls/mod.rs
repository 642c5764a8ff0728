//! Mutual TLS 1.3 for RPC connections: rustls does the handshake, and the
//! record layer of the established connection is ours ([`RecordStream`]),
//! opening and sealing records in the connection's own buffers.
//!
//! rustls's kernel-connection API (made for kTLS) hands over the traffic
//! keys and computes the next ones on a key update; everything after the
//! handshake follows RFC 8446 §5: records of at most 2^14 plaintext bytes,
//! per-record nonces from a sequence number that is never reused, key
//! updates before the cipher's confidentiality limit and on the peer's
//! request, close_notify at the end. Configurations must allow secret
//! extraction and TLS 1.3 only (see `auth::tls`).

mod handshake;
mod key;
mod records;

pub use handshake::{accept, connect};
pub use records::RecordStream;

/// Whether aws-lc-rs's AES-GCM is the one to use here: on x86-64 only
/// where its AVX-512 code runs (mTLS range reads of 4 KiB records 15 %
/// faster than with ring's on such a host); without AVX-512 ring's
/// VAES/AVX2 code seals 6.0-6.9 GB/s against aws-lc-rs's 2.5-3.5 GB/s
/// (BENCHMARKS.md, "Eleventh session"). On other architectures (ARMv8's
/// AES instructions) aws-lc-rs is kept.
pub fn avx512_aes_gcm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}
