//! The message domain: ids, content and the records herald keeps.
//!
//! Input from clients is parsed here once ("parse, don't validate"): a
//! [`UserId`], [`ConversationId`] or [`Content`] that exists is valid, so the
//! rest of the crate never re-checks.

pub mod moderation;
pub mod rules;

use crate::error::Error;
use std::{fmt, sync::Arc};

/// The longest id, in bytes, that herald accepts for users, conversations and
/// messages.
pub const MAX_ID_BYTES: usize = 128;

/// Checks the shape every id shares, and returns it in Unicode
/// normalization form C: not empty, at most [`MAX_ID_BYTES`] once
/// normalized, no control characters, and nothing that makes one id look
/// like another in a member list: no invisible (default-ignorable)
/// characters, bidi controls among them, no fullwidth or halfwidth forms.
/// "é" typed as e and a combining accent names the same user as "é"
/// precomposed: normalized, not refused, so a document can say what is
/// valid without listing Unicode's decompositions.
fn check_id(field: &str, value: &str) -> Result<Arc<str>, Error> {
    let value: Arc<str> = match unicode_normalization::is_nfc(value) {
        true => value.into(),
        false => unicode_normalization::UnicodeNormalization::nfc(value)
            .collect::<String>()
            .into(),
    };
    if value.is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_ID_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    if value
        .chars()
        .any(|c| is_default_ignorable(c) || is_width_form(c))
    {
        return Err(Error::invalid(format!(
            "{field} must not contain invisible, bidi-control, fullwidth or halfwidth characters"
        )));
    }
    Ok(value)
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt):
/// characters that render as nothing, the bidi controls among them.
fn is_default_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5
        | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E
        | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0
        | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// The Halfwidth and Fullwidth Forms block: `ａｌｉｃｅ` next to `alice`.
fn is_width_form(c: char) -> bool {
    matches!(c as u32, 0xFF00..=0xFFEF)
}

/// Declares an id newtype: cheap to clone, parsed from client input once.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses an id given by a client; `field` names it in the error.
            /// A well-formed id may still name nothing.
            pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
                Ok(Self(check_id(field, value)?))
            }

            /// Wraps an id read back from the database, where only parsed
            /// or generated ids are written.
            #[allow(dead_code, reason = "not every kind of id is read back")]
            pub(crate) fn from_stored(value: impl Into<Arc<str>>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user id: the `sub` claim of a token, or a participant named by a client.
    UserId
);

id_type!(
    /// A conversation id: 32 lowercase hex digits of randomness.
    ConversationId
);

id_type!(
    /// A client's name for one of its messages, which makes sending it retry-safe.
    IdempotencyKey
);

impl IdempotencyKey {
    /// The key of a message the application published, apart from every
    /// user's keys (it starts with a control character, which no parsed key
    /// holds): a user whose id is the sender's cannot take the key first,
    /// nor be answered with the application's message.
    pub fn published(self) -> Self {
        Self(format!("\u{1}{}", self.0).into())
    }
}

impl ConversationId {
    /// No conversation: what a presence event concerns (a user, in every
    /// conversation they share).
    pub fn none() -> Self {
        Self("".into())
    }

    /// A fresh, unguessable id.
    pub fn generate() -> Self {
        Self(random_hex().into())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A message's place in the one delivery order of the whole server.
///
/// Positions are assigned inside the inserting transaction from a single
/// counter row, so they are gap-free and increase in commit order (see
/// `store`). A message's public id is its position in decimal.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Position(pub i64);

impl Position {
    /// No position: positions start at 1, and signals have none.
    pub const NONE: Position = Position(0);

    /// Parses a message id given by a client: `Err` when malformed,
    /// `Ok(None)` when well-formed but not an id herald issues (so it names
    /// nothing), `Ok(Some)` otherwise.
    pub fn parse_id(field: &str, value: &str) -> Result<Option<Self>, Error> {
        check_id(field, value)?;
        Ok(value
            .parse::<i64>()
            .ok()
            .filter(|p| *p > 0 && value.bytes().all(|b| b.is_ascii_digit()))
            .map(Self))
    }

    /// The public message id.
    pub fn id(self) -> String {
        self.0.to_string()
    }
}

/// Message text: not empty, at most the configured number of bytes, and
/// no C0 control character but tab, line feed and carriage return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub fn parse(value: String, max_bytes: usize) -> Result<Self, Error> {
        if value.trim().is_empty() {
            return Err(Error::invalid("content must not be empty"));
        }
        if value.len() > max_bytes {
            return Err(Error::invalid(format!(
                "content must be at most {max_bytes} bytes"
            )));
        }
        // PostgreSQL's `text` cannot hold U+0000; refusing it here keeps
        // both backends alike and keeps one user's bytes out of a shared
        // commit (see `commit`).
        if value.contains('\0') {
            return Err(Error::invalid("content must not contain U+0000"));
        }
        // The other C0 controls have no place in chat text: nothing renders
        // them, ESC drives terminals, and each one becomes six bytes of JSON
        // (`\u0001`), so 16 KiB of them made a 96 KiB event for every
        // subscriber's queue. Tab, line feed and carriage return are text.
        if value
            .chars()
            .any(|c| c < ' ' && !matches!(c, '\t' | '\n' | '\r'))
        {
            return Err(Error::invalid(
                "content must not contain control characters other than tab, line feed and carriage return",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 128 random bits as 32 hex digits: ids nobody can guess.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // The OS random source failing is not something herald can serve around.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex(&bytes)
}

/// A committed message, as it now is.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    pub position: Position,
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    /// Empty once deleted.
    pub content: String,
    /// Microseconds since the Unix epoch, from the server's clock at commit.
    pub created_at_micros: i64,
    /// When the author last edited it.
    pub edited_at_micros: Option<i64>,
    pub deleted: bool,
    /// The message this one answers.
    pub reply_to: Option<Position>,
    /// Published by the application (`Admin.Publish`), not by a user.
    pub system: bool,
    /// By emoji, as one reader sees them; read for history, empty on the
    /// streams (reactions travel as events of their own).
    pub reactions: Vec<Reaction>,
}

/// The reactions to a message with one emoji, as one reader sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    pub emoji: String,
    pub count: i32,
    /// Whether the reader is among them.
    pub mine: bool,
}

/// An emoji to react with: one grapheme cluster (as unicode-segmentation
/// counts them) of at most [`MAX_EMOJI_BYTES`], nothing invisible or
/// blank. Not checked against an emoji list: a letter is a reaction too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emoji(String);

/// The longest emoji, in bytes: a family or a flag with modifiers fits.
pub const MAX_EMOJI_BYTES: usize = 32;

impl Emoji {
    pub fn parse(value: &str) -> Result<Self, Error> {
        use unicode_segmentation::UnicodeSegmentation;
        let invalid = |why: &str| Err(Error::invalid(format!("emoji {why}")));
        if value.len() > MAX_EMOJI_BYTES {
            return invalid(&format!("must be at most {MAX_EMOJI_BYTES} bytes"));
        }
        if value.graphemes(true).count() != 1 {
            return invalid("must be exactly one character (grapheme cluster)");
        }
        if value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\u{2800}' || is_width_form(c))
        {
            return invalid("must not be a control, blank, fullwidth or halfwidth character");
        }
        // Invisible characters only where emoji sequences need them: a
        // joiner between two characters, one variation selector after a
        // character, tags after a black flag (subdivision flags).
        let chars: Vec<char> = value.chars().collect();
        let flag = chars.first() == Some(&'\u{1F3F4}');
        for (index, &c) in chars.iter().enumerate() {
            let previous = index.checked_sub(1).map(|at| chars[at]);
            let visible_before = previous.is_some_and(|p| !is_default_ignorable(p));
            let allowed = match c {
                '\u{200D}' => {
                    let selector = matches!(previous, Some('\u{FE0E}' | '\u{FE0F}'));
                    (visible_before || selector) && index + 1 < chars.len()
                }
                '\u{FE0E}' | '\u{FE0F}' => visible_before,
                '\u{E0020}'..='\u{E007F}' => flag,
                c => !is_default_ignorable(c),
            };
            if !allowed {
                return invalid("must not hold invisible characters outside an emoji sequence");
            }
        }
        // "é" typed in two code points is the same reaction as in one.
        Ok(Self(
            unicode_normalization::UnicodeNormalization::nfc(value).collect(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What happened at one stream position: a message, or a change to a
/// conversation that every member's event stream carries in the same order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub position: Position,
    pub conversation_id: ConversationId,
    /// The sender, the reader, or whoever changed the membership.
    pub user_id: UserId,
    /// Microseconds since the Unix epoch, from the server's clock at commit.
    pub created_at_micros: i64,
    pub body: Body,
}

/// The kinds of event, each with what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A message: its text, the message it answers, and (replayed after
    /// the fact) whether it was edited or deleted since.
    Message {
        content: String,
        reply_to: Option<Position>,
        edited_at_micros: Option<i64>,
        deleted: bool,
        system: bool,
    },
    /// A message was edited: the message as it now is.
    Edited(Box<Message>),
    /// A message was deleted: its tombstone.
    Deleted(Box<Message>),
    /// The user reacted to `message` with `emoji`, or took it back.
    Reaction {
        message: Position,
        emoji: String,
        added: bool,
    },
    /// The user read up to this message.
    Read(Position),
    Membership(Change),
    /// The user is typing: a signal, with no position.
    Typing,
    /// The user came online or went offline: a signal, with no position
    /// and no conversation ([`ConversationId::none`]).
    Presence {
        online: bool,
        last_seen_micros: i64,
    },
}

/// Participants added to or removed from a group, and the group after.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Change {
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
    /// Every participant right after the change, sorted.
    pub members: Vec<UserId>,
    pub creator: Option<UserId>,
    pub conversation_created_at_micros: i64,
}

impl Event {
    /// The message, if this event is one.
    pub fn message(&self) -> Option<Message> {
        match &self.body {
            Body::Message {
                content,
                reply_to,
                edited_at_micros,
                deleted,
                system,
            } => Some(Message {
                position: self.position,
                conversation_id: self.conversation_id.clone(),
                user_id: self.user_id.clone(),
                content: content.clone(),
                created_at_micros: self.created_at_micros,
                edited_at_micros: *edited_at_micros,
                deleted: *deleted,
                reply_to: *reply_to,
                system: *system,
                reactions: Vec::new(),
            }),
            _ => None,
        }
    }

    pub fn is_message(&self) -> bool {
        matches!(self.body, Body::Message { .. })
    }

    /// The message a change concerns (an edit, a deletion, a reaction): only
    /// those who saw it receive the change.
    pub fn target(&self) -> Option<Position> {
        match &self.body {
            Body::Edited(message) | Body::Deleted(message) => Some(message.position),
            Body::Reaction { message, .. } => Some(*message),
            _ => None,
        }
    }

    /// A signal (typing, presence): never stored, never replayed, so it has
    /// no stream position ([`Position::NONE`]).
    pub fn signal(conversation_id: ConversationId, user_id: UserId, body: Body) -> Self {
        Self {
            position: Position::NONE,
            conversation_id,
            user_id,
            created_at_micros: now_micros(),
            body,
        }
    }

    /// About how many bytes it holds in memory.
    pub fn approximate_bytes(&self) -> usize {
        let ids = |ids: &[UserId]| ids.iter().map(|id| id.as_str().len() + 48).sum::<usize>();
        200 + match &self.body {
            Body::Message { content, .. } => content.len(),
            Body::Edited(message) | Body::Deleted(message) => message.content.len() + 100,
            Body::Reaction { emoji, .. } => emoji.len(),
            Body::Membership(change) => {
                ids(&change.added) + ids(&change.removed) + ids(&change.members)
            }
            Body::Read(_) | Body::Typing | Body::Presence { .. } => 0,
        }
    }

    /// Whether this event has a stream position (everything but signals).
    pub fn has_position(&self) -> bool {
        self.position != Position::NONE
    }
}

impl Body {
    /// The name stored in the `kind` column and carried between nodes.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Message { .. } => "message",
            Body::Edited(_) => "edit",
            Body::Deleted(_) => "delete",
            Body::Reaction { .. } => "reaction",
            Body::Read(_) => "read",
            Body::Membership(_) => "membership",
            Body::Typing => "typing",
            Body::Presence { .. } => "presence",
        }
    }

    /// What the `content` column holds, and what travels between nodes: a
    /// message's text, a receipt's message position, a change as JSON. An
    /// edit or a deletion travels as the message it leaves (JSON); its row
    /// holds nothing (`target` names the message), so the message's own row
    /// stays the only copy of its content.
    pub fn encode(&self) -> String {
        match self {
            Body::Message { content, .. } => content.clone(),
            Body::Edited(message) | Body::Deleted(message) => {
                serde_json::to_string(&StoredMessage::from(&**message))
                    .unwrap_or_else(|_| String::from("{}"))
            }
            Body::Reaction {
                message,
                emoji,
                added,
            } => serde_json::to_string(&StoredReaction {
                message: message.0,
                emoji: emoji.clone(),
                added: *added,
            })
            .unwrap_or_else(|_| String::from("{}")),
            Body::Read(position) => position.0.to_string(),
            Body::Membership(change) => serde_json::to_string(&StoredChange::from(change))
                .unwrap_or_else(|_| String::from("{}")),
            Body::Typing => String::new(),
            Body::Presence {
                online,
                last_seen_micros,
            } => format!("{}:{last_seen_micros}", u8::from(*online)),
        }
    }

    /// The body [`encode`](Self::encode) wrote under `kind` (a message's
    /// `reply_to` travels beside it). Only herald writes these columns;
    /// anything unreadable decodes as an empty event rather than a panic.
    pub fn decode(kind: &str, content: String, reply_to: Option<Position>) -> Self {
        match kind {
            "edit" | "delete" => {
                let message = serde_json::from_str::<StoredMessage>(&content)
                    .map(Message::from)
                    .unwrap_or_default();
                match kind {
                    "edit" => Body::Edited(Box::new(message)),
                    _ => Body::Deleted(Box::new(message)),
                }
            }
            "reaction" => {
                let stored = serde_json::from_str::<StoredReaction>(&content).ok();
                let stored = stored.unwrap_or(StoredReaction {
                    message: 0,
                    emoji: String::new(),
                    added: false,
                });
                Body::Reaction {
                    message: Position(stored.message),
                    emoji: stored.emoji,
                    added: stored.added,
                }
            }
            "read" => Body::Read(Position(content.parse().unwrap_or(0))),
            "typing" => Body::Typing,
            "presence" => {
                let (online, seen) = content.split_once(':').unwrap_or_default();
                Body::Presence {
                    online: online == "1",
                    last_seen_micros: seen.parse().unwrap_or(0),
                }
            }
            "membership" => Body::Membership(
                serde_json::from_str::<StoredChange>(&content)
                    .map(Change::from)
                    .unwrap_or_default(),
            ),
            _ => Body::Message {
                content,
                reply_to,
                edited_at_micros: None,
                deleted: false,
                system: false,
            },
        }
    }
}

/// A changed [`Message`] as it travels between nodes: plain values.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMessage {
    position: i64,
    conversation: String,
    user: String,
    content: String,
    created_at: i64,
    edited_at: Option<i64>,
    deleted: bool,
    reply_to: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    system: bool,
}

impl From<&Message> for StoredMessage {
    fn from(message: &Message) -> Self {
        Self {
            position: message.position.0,
            conversation: message.conversation_id.as_str().to_owned(),
            user: message.user_id.as_str().to_owned(),
            content: message.content.clone(),
            created_at: message.created_at_micros,
            edited_at: message.edited_at_micros,
            deleted: message.deleted,
            reply_to: message.reply_to.map(|position| position.0),
            system: message.system,
        }
    }
}

impl From<StoredMessage> for Message {
    fn from(stored: StoredMessage) -> Self {
        Self {
            position: Position(stored.position),
            conversation_id: ConversationId::from_stored(stored.conversation),
            user_id: UserId::from_stored(stored.user),
            content: stored.content,
            created_at_micros: stored.created_at,
            edited_at_micros: stored.edited_at,
            deleted: stored.deleted,
            reply_to: stored.reply_to.map(Position),
            system: stored.system,
            reactions: Vec::new(),
        }
    }
}

/// A reaction event's content: stored, and carried between nodes.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredReaction {
    message: i64,
    emoji: String,
    added: bool,
}

/// [`Change`] as stored and carried: plain strings.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredChange {
    added: Vec<String>,
    removed: Vec<String>,
    members: Vec<String>,
    creator: Option<String>,
    created_at: i64,
}

impl From<&Change> for StoredChange {
    fn from(change: &Change) -> Self {
        let strings = |ids: &[UserId]| ids.iter().map(|id| id.as_str().to_owned()).collect();
        Self {
            added: strings(&change.added),
            removed: strings(&change.removed),
            members: strings(&change.members),
            creator: change.creator.as_ref().map(|id| id.as_str().to_owned()),
            created_at: change.conversation_created_at_micros,
        }
    }
}

impl From<StoredChange> for Change {
    fn from(stored: StoredChange) -> Self {
        let ids = |ids: Vec<String>| ids.into_iter().map(UserId::from_stored).collect();
        Self {
            added: ids(stored.added),
            removed: ids(stored.removed),
            members: ids(stored.members),
            creator: stored.creator.map(UserId::from_stored),
            conversation_created_at_micros: stored.created_at,
        }
    }
}

impl From<Message> for Event {
    fn from(message: Message) -> Self {
        Self {
            position: message.position,
            conversation_id: message.conversation_id,
            user_id: message.user_id,
            created_at_micros: message.created_at_micros,
            body: Body::Message {
                content: message.content,
                reply_to: message.reply_to,
                edited_at_micros: message.edited_at_micros,
                deleted: message.deleted,
                system: message.system,
            },
        }
    }
}

/// A conversation as one participant sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub id: ConversationId,
    /// Sorted, the viewer included.
    pub participant_ids: Vec<UserId>,
    pub last_message: Option<Message>,
    /// Messages from others after the viewer's read mark.
    pub unread_count: i64,
    pub created_at_micros: i64,
    /// Who created it (groups only): the one who may remove others.
    pub creator_id: Option<UserId>,
}

impl Conversation {
    /// When it last saw activity: its newest message, else its creation.
    pub fn activity_micros(&self) -> i64 {
        self.last_message
            .as_ref()
            .map_or(self.created_at_micros, |message| message.created_at_micros)
    }

    /// About how many bytes it takes on the wire.
    pub fn approximate_bytes(&self) -> usize {
        let members: usize = self
            .participant_ids
            .iter()
            .map(|id| id.as_str().len() + 3)
            .sum();
        let last = self
            .last_message
            .as_ref()
            .map_or(0, |m| m.content.len() + 200);
        members + last + 100
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_non_empty_short_and_printable() {
        assert!(UserId::parse("sub", "alice").is_ok());
        assert!(UserId::parse("sub", "").is_err());
        assert!(UserId::parse("sub", &"x".repeat(129)).is_err());
        assert!(UserId::parse("sub", &"é".repeat(64)).is_ok());
        assert!(UserId::parse("sub", "a\nb").is_err());
    }

    #[test]
    fn an_emoji_is_one_visible_cluster_and_invisible_characters_only_join_it() {
        for good in [
            "👍",
            "👍🏽",
            "❤️",
            "👨‍👩‍👧",
            "🏳️‍🌈",
            "🇫🇷",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "A",
        ] {
            assert!(Emoji::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "👍👍",
            "ab",
            " ",
            "\u{7}",
            "\u{200b}",
            "a\u{200d}",
            "a\u{34f}",
            "a\u{fe0f}\u{fe0f}",
            "\u{2800}",
            "\u{ff21}",
            "a\u{E0068}\u{E0069}",
        ] {
            assert!(Emoji::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Emoji::parse("e\u{301}").unwrap(),
            Emoji::parse("\u{e9}").unwrap()
        );
    }

    #[test]
    fn ids_that_could_pass_for_another_are_refused() {
        // Right-to-left override, zero-width space, fullwidth letters.
        assert!(UserId::parse("sub", "ali\u{202e}ecb").is_err());
        assert!(UserId::parse("sub", "al\u{200b}ice").is_err());
        assert!(UserId::parse("sub", "\u{ff41}lice").is_err());
        // "é" as e and a combining accent is "é" precomposed (NFC).
        let decomposed = UserId::parse("sub", "jose\u{301}").unwrap();
        assert_eq!(decomposed.as_str(), "jos\u{e9}");
        assert_eq!(decomposed, UserId::parse("sub", "jos\u{e9}").unwrap());
        assert!(UserId::parse("sub", "李小龍").is_ok());
    }

    #[test]
    fn a_message_id_that_is_not_a_position_names_nothing() {
        assert_eq!(Position::parse_id("id", "42").unwrap(), Some(Position(42)));
        assert_eq!(Position::parse_id("id", "0").unwrap(), None);
        assert_eq!(Position::parse_id("id", "+4").unwrap(), None);
        assert_eq!(Position::parse_id("id", "abc").unwrap(), None);
        assert!(Position::parse_id("id", "").is_err());
    }

    #[test]
    fn content_is_bounded_and_never_blank() {
        assert!(Content::parse("hi".into(), 16).is_ok());
        assert!(Content::parse(" \n".into(), 16).is_err());
        assert!(Content::parse("x".repeat(17), 16).is_err());
    }

    #[test]
    fn content_keeps_tabs_and_newlines_and_refuses_other_control_characters() {
        assert!(Content::parse("a\tb\r\nc".into(), 16).is_ok());
        assert!(Content::parse("a\u{1}b".into(), 16).is_err());
        assert!(Content::parse("a\u{1b}[2J".into(), 16).is_err());
        assert!(
            Content::parse("a\u{7f}\u{85}b".into(), 16).is_ok(),
            "DEL and C1 are one escape-free char"
        );
    }
}
