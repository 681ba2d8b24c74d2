//! Everything a client can send herald before any business logic runs:
//! tokens, message ids (cursors, Last-Event-ID), JSON bodies, timestamps and
//! the head of a stream request (served without hyper).
//! None of it may panic, whatever the bytes (the inputs are listed in
//! `herald::fuzz_network_input`, which a unit test also runs over the corpus).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzz_network_input(data));
