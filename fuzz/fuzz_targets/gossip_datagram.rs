//! See `proglog::fuzzing::gossip_datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog::fuzzing::gossip_datagram(data);
});
