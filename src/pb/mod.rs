//! The generated `herald.v1` types, their proto3 canonical JSON mapping (from
//! pbjson), and the one conversion from domain records into them that every
//! transport uses, so a message reads the same in gRPC, REST and SSE.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/herald.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/herald.v1.serde.rs"));

/// The encoded descriptor set of `herald.v1`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));

mod timestamp;

pub use timestamp::Timestamp;

use crate::domain;

fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

impl From<&domain::Message> for Message {
    fn from(message: &domain::Message) -> Self {
        Self {
            id: message.position.id(),
            conversation_id: message.conversation_id.as_str().to_owned(),
            user_id: message.user_id.as_str().to_owned(),
            content: message.content.clone(),
            created_at: Some(timestamp(message.created_at_micros)),
        }
    }
}

impl From<&domain::Conversation> for Conversation {
    fn from(conversation: &domain::Conversation) -> Self {
        Self {
            id: conversation.id.as_str().to_owned(),
            participant_ids: conversation
                .participant_ids
                .iter()
                .map(|user| user.as_str().to_owned())
                .collect(),
            last_message: conversation.last_message.as_ref().map(Message::from),
            unread_count: conversation.unread_count,
            created_at: Some(timestamp(conversation.created_at_micros)),
        }
    }
}
