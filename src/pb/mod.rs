//! The generated `herald.v1` types, their proto3 canonical JSON mapping (from
//! pbjson), and the one conversion from domain records into them that every
//! transport uses, so a message reads the same in gRPC, REST and SSE.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/herald.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/herald.v1.serde.rs"));

/// The encoded descriptor set of `herald.v1`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));

pub mod codec;
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
            edited_at: message.edited_at_micros.map(timestamp),
            deleted: message.deleted,
            reactions: message
                .reactions
                .iter()
                .map(|reaction| Reaction {
                    emoji: reaction.emoji.clone(),
                    count: reaction.count,
                    mine: reaction.mine,
                })
                .collect(),
            reply_to_id: message.reply_to.map(|id| id.id()).unwrap_or_default(),
            system: message.system,
        }
    }
}

impl From<&domain::Conversation> for Conversation {
    fn from(conversation: &domain::Conversation) -> Self {
        Self {
            id: conversation.id.as_str().to_owned(),
            participant_ids: ids(&conversation.participant_ids),
            last_message: conversation.last_message.as_ref().map(Message::from),
            unread_count: conversation.unread_count,
            created_at: Some(timestamp(conversation.created_at_micros)),
            creator_id: ids(conversation.creator_id.as_slice()).concat(),
        }
    }
}

fn ids(users: &[domain::UserId]) -> Vec<String> {
    users.iter().map(|user| user.as_str().to_owned()).collect()
}

impl From<&domain::Event> for event::Kind {
    fn from(event: &domain::Event) -> Self {
        let conversation_id = event.conversation_id.as_str().to_owned();
        match &event.body {
            domain::Body::Message { .. } => event::Kind::Message(
                event
                    .message()
                    .as_ref()
                    .map(Message::from)
                    .unwrap_or_default(),
            ),
            domain::Body::Edited(message) => event::Kind::Edited((&**message).into()),
            domain::Body::Deleted(message) => event::Kind::Deleted((&**message).into()),
            domain::Body::Reaction {
                message,
                emoji,
                added,
            } => event::Kind::Reaction(ReactionChange {
                conversation_id,
                message_id: message.id(),
                user_id: event.user_id.as_str().to_owned(),
                emoji: emoji.clone(),
                added: *added,
            }),
            domain::Body::Read(message) => event::Kind::Read(ReadReceipt {
                conversation_id,
                user_id: event.user_id.as_str().to_owned(),
                message_id: message.id(),
            }),
            domain::Body::Presence {
                online,
                last_seen_micros,
            } => event::Kind::Presence(Presence {
                user_id: event.user_id.as_str().to_owned(),
                online: *online,
                last_seen: Some(timestamp(*last_seen_micros)),
            }),
            domain::Body::Typing => event::Kind::Typing(Typing {
                conversation_id,
                user_id: event.user_id.as_str().to_owned(),
            }),
            domain::Body::Membership(change) => event::Kind::Membership(MembershipChange {
                conversation: Some(Conversation {
                    id: conversation_id.clone(),
                    participant_ids: ids(&change.members),
                    last_message: None,
                    unread_count: 0,
                    created_at: Some(timestamp(change.conversation_created_at_micros)),
                    creator_id: ids(change.creator.as_slice()).concat(),
                }),
                conversation_id,
                actor_id: event.user_id.as_str().to_owned(),
                added_ids: ids(&change.added),
                removed_ids: ids(&change.removed),
            }),
        }
    }
}

impl From<&domain::Event> for Event {
    fn from(event: &domain::Event) -> Self {
        Self {
            // Signals have no position, and no id.
            id: match event.has_position() {
                true => event.position.id(),
                false => String::new(),
            },
            kind: Some(event.into()),
            // Only the firehose and webhooks say (`firehose::Stored`).
            offline_recipients: Vec::new(),
        }
    }
}

/// A presence answer: `None` for a user never seen online (offline, no
/// `last_seen`).
pub(crate) fn presence(
    user: &domain::UserId,
    seen: Option<crate::engine::presence::Seen>,
) -> Presence {
    Presence {
        user_id: user.as_str().to_owned(),
        online: seen.is_some_and(|seen| seen.online),
        last_seen: seen.map(|seen| timestamp(seen.last_seen_micros)),
    }
}
