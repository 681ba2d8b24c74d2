//! Member lists kept in memory: the sender's quick check and typing's addresses.

use super::Store;
use crate::domain::{ConversationId, UserId};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Conversations' current participants, cached and shared; cheap to
/// clone. Used to answer a sender quickly (the message insert checks
/// membership again inside its transaction, so a stale entry can never let
/// a removed member's message in) and to address typing signals, which are
/// best effort. The feed, which decides who receives what, keeps a
/// [`MemberLists`] of its own. This node's feed forgets an entry when it
/// passes a change to that conversation.
#[derive(Clone)]
pub struct Participants {
    store: Store,
    cache: Arc<Mutex<MemberLists>>,
}

impl Participants {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    /// The participants of `id`, sorted; empty when it does not exist.
    pub async fn of(&self, id: &ConversationId) -> Result<Arc<[UserId]>, sqlx::Error> {
        if let Some(found) = self.lock().get(id) {
            return Ok(found);
        }
        let found: Arc<[UserId]> = self.store.participants(id).await?.into();
        if !found.is_empty() {
            self.lock().insert(id.clone(), found.clone());
        }
        Ok(found)
    }

    /// Drops what is cached of `id`: its membership changed.
    pub fn forget(&self, id: &ConversationId) {
        self.lock().forget(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemberLists> {
        // A plain map: a panicking holder cannot leave it half-updated.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Member lists by conversation, bounded: the map starts over past
/// [`MEMBER_LIST_BYTES`], counted from the ids it holds, so a few giant
/// groups cannot make it grow without bound.
#[derive(Default)]
pub struct MemberLists {
    lists: HashMap<ConversationId, Arc<[UserId]>>,
    bytes: usize,
}

/// Bytes of ids cached before a [`MemberLists`] starts over.
const MEMBER_LIST_BYTES: usize = 64 * 1024 * 1024;

impl MemberLists {
    pub fn get(&self, id: &ConversationId) -> Option<Arc<[UserId]>> {
        self.lists.get(id).cloned()
    }

    pub fn insert(&mut self, id: ConversationId, members: Arc<[UserId]>) {
        // Each id's bytes, its String and the list's slot.
        let bytes = members
            .iter()
            .map(|user| user.as_str().len() + 48)
            .sum::<usize>()
            + id.as_str().len()
            + 64;
        if self.bytes + bytes > MEMBER_LIST_BYTES {
            *self = Self::default();
        }
        // A replaced list's bytes stay counted until the map starts over:
        // an overestimate, never an underestimate.
        self.bytes += bytes;
        self.lists.insert(id, members);
    }

    pub fn forget(&mut self, id: &ConversationId) {
        self.lists.remove(id);
    }
}
