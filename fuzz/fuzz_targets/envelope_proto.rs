#![no_main]
//! See `gsio_relay::fuzzing::envelope_proto` for the input and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gsio_relay::fuzzing::envelope_proto(data));
