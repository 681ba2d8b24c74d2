//! Everything a client can send herald before any business logic runs:
//! tokens, message ids (cursors, Last-Event-ID), JSON bodies and timestamps.
//! None of it may panic, whatever the bytes.
#![no_main]

use herald::{auth::Auth, domain::Position, pb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Auth::hs256(b"fuzz-secret").verify(&text);
    let _ = Position::parse_id("after_id", &text);
    let _ = herald::auth::bearer(&text);
    let _ = serde_json::from_slice::<pb::CreateMessageRequest>(data);
    let _ = serde_json::from_slice::<pb::CreateConversationRequest>(data);
    let _ = serde_json::from_slice::<pb::MarkReadRequest>(data);
    let _ = pb::Timestamp::parse_rfc3339(&text);
});
