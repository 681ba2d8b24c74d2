//! The application's hand on the chat, as values: what a service key may do
//! ([`Scopes`]), what moderation does ([`Action`]), and the pure fold of the
//! moderation log into what every node checks in memory on every call
//! ([`Standing`]). The store keeps the log; `engine::moderation` reads it
//! and applies each entry once per node.

use super::UserId;
use std::collections::HashMap;

/// One thing a service key may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Publish system messages.
    Publish,
    /// Create conversations on a user's behalf, add and remove members.
    Manage,
    /// Delete any message, ban, disconnect, revoke tokens.
    Moderate,
    /// Read any history and anyone's presence.
    Read,
    /// Everything, webhooks included.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Publish,
        Scope::Manage,
        Scope::Moderate,
        Scope::Read,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Manage => "manage",
            Scope::Moderate => "moderate",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// The refusal of a key without this scope: a fixed message, as every
    /// authentication message is.
    pub fn missing(self) -> &'static str {
        match self {
            Scope::Publish => "this service key lacks the publish scope",
            Scope::Manage => "this service key lacks the manage scope",
            Scope::Moderate => "this service key lacks the moderate scope",
            Scope::Read => "this service key lacks the read scope",
            Scope::Admin => "this service key lacks the admin scope",
        }
    }
}

/// The scopes of one service key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// `publish,read`-style lists, as `herald key create --scope` takes
    /// them and the database keeps them.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut scopes = Scopes::default();
        for name in list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let scope = Scope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == name)
                .ok_or_else(|| {
                    format!("unknown scope {name:?}: use publish, manage, moderate, read or admin")
                })?;
            scopes.0 |= 1 << scope as u8;
        }
        match scopes.0 {
            0 => Err("a key needs at least one scope".into()),
            _ => Ok(scopes),
        }
    }

    /// Whether a key with these scopes may do what `scope` allows: `admin`
    /// allows everything.
    pub fn allow(self, scope: Scope) -> bool {
        self.0 & (1 << scope as u8 | 1 << Scope::Admin as u8) != 0
    }

    /// The list, in the order of [`Scope::ALL`].
    pub fn to_list(self) -> String {
        Scope::ALL
            .into_iter()
            .filter(|scope| self.0 & (1 << *scope as u8) != 0)
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One moderation action on one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Every call refused until `until` (seconds since the epoch), or for
    /// good; open streams end.
    Ban {
        until: Option<i64>,
        reason: String,
    },
    Unban,
    /// Tokens issued before `issued_before` (seconds since the epoch), or
    /// with no `iat`, are refused; streams opened with them end.
    Revoke {
        issued_before: i64,
    },
    /// Open streams end; the user may connect again.
    Disconnect {
        reason: String,
    },
}

impl Action {
    /// A revocation of the tokens issued before `issued_before` (seconds
    /// since the epoch), or, when it is not given, of every token issued
    /// up to now: `iat` counts whole seconds, so "now" is the next whole
    /// second, and a token issued earlier in this second is revoked too.
    pub fn revoke(issued_before: Option<i64>) -> Self {
        let now = super::now_micros();
        let next_second = now / 1_000_000 + i64::from(now % 1_000_000 != 0);
        Action::Revoke {
            issued_before: issued_before.unwrap_or(next_second),
        }
    }

    /// Its name in the log and in `/metrics`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Ban { .. } => "ban",
            Action::Unban => "unban",
            Action::Revoke { .. } => "revoke",
            Action::Disconnect { .. } => "disconnect",
        }
    }
}

/// An entry of the moderation log, at its place `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub user: UserId,
    pub action: Action,
}

/// Why moderation ended a stream: told to its client as it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Banned(String),
    Revoked,
    Disconnected(String),
}

impl Ending {
    /// What the client is told.
    pub fn reason(&self) -> String {
        match self {
            Ending::Banned(reason) if reason.is_empty() => "banned".into(),
            Ending::Banned(reason) => format!("banned: {reason}"),
            Ending::Revoked => "token revoked".into(),
            Ending::Disconnected(reason) if reason.is_empty() => "disconnected".into(),
            Ending::Disconnected(reason) => format!("disconnected: {reason}"),
        }
    }
}

/// What an entry does to the user's open streams: end those opened with a
/// token issued before `issued_before` (all of them when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndStreams {
    pub ending: Ending,
    pub issued_before: Option<i64>,
}

/// Why a call is refused: a ban, or a revoked token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Banned(String),
    Revoked,
}

/// Every ban and revocation in force, folded from the log in `seq` order.
#[derive(Debug, Default)]
pub struct Standing {
    bans: HashMap<UserId, (Option<i64>, String)>,
    revoked: HashMap<UserId, i64>,
    /// The last entry applied.
    pub seq: i64,
}

impl Standing {
    /// Applies `entry` (entries come in `seq` order; one already applied
    /// changes nothing) and says which of the user's streams it ends.
    pub fn apply(&mut self, entry: &Entry) -> Option<EndStreams> {
        if entry.seq <= self.seq {
            return None;
        }
        self.seq = entry.seq;
        let user = entry.user.clone();
        let end = |ending, issued_before| {
            Some(EndStreams {
                ending,
                issued_before,
            })
        };
        match &entry.action {
            Action::Ban { until, reason } => {
                self.bans.insert(user, (*until, reason.clone()));
                end(Ending::Banned(reason.clone()), None)
            }
            Action::Unban => {
                self.bans.remove(&user);
                None
            }
            Action::Revoke { issued_before } => {
                let before = self.revoked.entry(user).or_insert(*issued_before);
                *before = (*before).max(*issued_before);
                end(Ending::Revoked, Some(*issued_before))
            }
            Action::Disconnect { reason } => end(Ending::Disconnected(reason.clone()), None),
        }
    }

    /// Whether `user`, with a token issued at `issued_at` (seconds), may
    /// call at `now` (seconds).
    pub fn refuses(&self, user: &UserId, issued_at: Option<u64>, now: i64) -> Option<Refusal> {
        if let Some((until, reason)) = self.bans.get(user)
            && until.is_none_or(|until| now < until)
        {
            return Some(Refusal::Banned(reason.clone()));
        }
        let before = *self.revoked.get(user)?;
        let issued_at = issued_at.map_or(i64::MIN, |at| i64::try_from(at).unwrap_or(i64::MAX));
        (issued_at < before).then_some(Refusal::Revoked)
    }

    /// Whether nothing is in force: the common case, checked without a lookup.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty() && self.revoked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bob() -> UserId {
        UserId::parse("user", "bob").unwrap()
    }

    fn entry(seq: i64, action: Action) -> Entry {
        Entry {
            seq,
            user: bob(),
            action,
        }
    }

    #[test]
    fn scopes_parse_and_admin_allows_everything() {
        let scopes = Scopes::parse("publish, read").unwrap();
        assert!(scopes.allow(Scope::Publish) && scopes.allow(Scope::Read));
        assert!(!scopes.allow(Scope::Moderate) && !scopes.allow(Scope::Admin));
        assert_eq!(scopes.to_list(), "publish,read");
        let admin = Scopes::parse("admin").unwrap();
        assert!(Scope::ALL.into_iter().all(|scope| admin.allow(scope)));
        assert!(Scopes::parse("publish,root").is_err());
        assert!(Scopes::parse(" , ").is_err());
    }

    #[test]
    fn a_ban_refuses_until_it_ends_or_is_lifted() {
        let mut standing = Standing::default();
        let ban = Action::Ban {
            until: Some(100),
            reason: "spam".into(),
        };
        let end = standing.apply(&entry(1, ban)).unwrap();
        assert_eq!(end.ending, Ending::Banned("spam".into()));
        assert_eq!(
            standing.refuses(&bob(), Some(0), 99),
            Some(Refusal::Banned("spam".into()))
        );
        assert_eq!(
            standing.refuses(&bob(), Some(0), 100),
            None,
            "over at until"
        );
        standing.apply(&entry(2, Action::Unban));
        assert_eq!(standing.refuses(&bob(), Some(0), 50), None);
        assert!(standing.is_empty());
    }

    #[test]
    fn a_revocation_refuses_older_tokens_and_tokens_without_iat() {
        let mut standing = Standing::default();
        let end = standing
            .apply(&entry(1, Action::Revoke { issued_before: 50 }))
            .unwrap();
        assert_eq!(end.issued_before, Some(50));
        assert_eq!(
            standing.refuses(&bob(), Some(49), 60),
            Some(Refusal::Revoked)
        );
        assert_eq!(standing.refuses(&bob(), None, 60), Some(Refusal::Revoked));
        assert_eq!(standing.refuses(&bob(), Some(50), 60), None);
        // An earlier cut-off later never un-revokes.
        standing.apply(&entry(2, Action::Revoke { issued_before: 10 }));
        assert_eq!(
            standing.refuses(&bob(), Some(30), 60),
            Some(Refusal::Revoked)
        );
    }

    #[test]
    fn an_entry_applies_once_in_order() {
        let mut standing = Standing::default();
        let disconnect = Action::Disconnect {
            reason: String::new(),
        };
        assert!(standing.apply(&entry(3, disconnect.clone())).is_some());
        assert!(standing.apply(&entry(3, disconnect.clone())).is_none());
        assert!(standing.apply(&entry(2, disconnect)).is_none());
        assert_eq!(standing.seq, 3);
    }
}
