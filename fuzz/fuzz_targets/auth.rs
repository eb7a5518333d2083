#![no_main]
//! See `gsio_relay_core::fuzzing::auth` for the input and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gsio_relay_core::fuzzing::auth(data));
