#![no_main]
//! See `gsio_relay_core::fuzzing::envelope_json` for the input and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gsio_relay_core::fuzzing::envelope_json(data));
