//! See `proglog::fuzzing::rpc_messages`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _answered = proglog::fuzzing::rpc_messages(data);
});
