#![no_main]
//! See `gsio_relay_core::fuzzing::config_toml` for the input and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gsio_relay_core::fuzzing::config_toml(data));
