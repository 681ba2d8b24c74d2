//! The rules of changing a conversation, as pure functions of the state
//! they need: the store locks, reads that state inside its transaction,
//! asks here, and writes what the answer says. Unit-tested without a
//! database; the rules of message changes and of the Admin service belong
//! here too.

use super::UserId;
use crate::error::Error;

/// Who asks for a change: a user, under every rule here, or the
/// application behind herald (a service key with the scope), above the
/// participant, creator and author rules but not the others (a pair stays
/// a pair, the cap holds, a deleted message stays deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    Member,
    Service,
}

/// A conversation as its membership rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Group<'a> {
    /// A conversation of exactly two, found-or-created: its members are fixed.
    pub pair: bool,
    /// Who created it (groups only): the one who may remove others.
    pub creator: Option<&'a UserId>,
    /// Its participants now, sorted.
    pub members: &'a [UserId],
}

/// Why a change is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The actor is not a participant.
    NotAParticipant,
    /// A one-to-one conversation's participants cannot change.
    NotAGroup,
    /// Only the creator removes others.
    NotTheCreator,
    /// The user to remove is not a participant.
    NoSuchParticipant,
    /// More participants than a conversation may have.
    TooMany { max: usize },
    /// Only a message's author edits or deletes it.
    NotTheAuthor,
    /// A deleted message takes no edits and no reactions.
    Deleted,
    /// A message holds at most [`MAX_EMOJI`] distinct emoji.
    TooManyEmoji,
    /// A system message changes only through the Admin service, whoever
    /// it names as its sender.
    SystemMessage,
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotAParticipant => Error::PermissionDenied,
            Refusal::NotAGroup => Error::FailedPrecondition(
                "the participants of a one-to-one conversation cannot change".into(),
            ),
            Refusal::NotTheCreator => {
                Error::Forbidden("only the conversation's creator may remove others")
            }
            Refusal::NoSuchParticipant => Error::NotFound("participant"),
            Refusal::TooMany { max } => {
                Error::invalid(format!("a conversation has at most {max} participants"))
            }
            Refusal::NotTheAuthor => Error::Forbidden("only its author may change a message"),
            Refusal::Deleted => {
                Error::FailedPrecondition("the message was deleted: it cannot change".into())
            }
            Refusal::TooManyEmoji => Error::FailedPrecondition(format!(
                "a message holds at most {MAX_EMOJI} distinct emoji"
            )),
            Refusal::SystemMessage => {
                Error::Forbidden("a system message changes only through the Admin service")
            }
        }
    }
}

/// Distinct emoji one message may hold: a flood of different reactions is
/// refused, not stored.
pub const MAX_EMOJI: usize = 20;

/// A message as the rules of changing it see it, read inside the change's
/// transaction.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub author: &'a UserId,
    pub deleted: bool,
    /// Published by the application: its named sender is no author.
    pub system: bool,
}

impl Target<'_> {
    /// Whether `actor` may edit it.
    pub fn edit(&self, actor: &UserId) -> Result<(), Refusal> {
        self.by_author(actor)?;
        if self.system {
            return Err(Refusal::SystemMessage);
        }
        match self.deleted {
            true => Err(Refusal::Deleted),
            false => Ok(()),
        }
    }

    /// Whether `actor` may delete it, and whether that changes anything (a
    /// deleted message stays as it is).
    pub fn delete(&self, actor: &UserId, by: Authority) -> Result<bool, Refusal> {
        if by == Authority::Member {
            self.by_author(actor)?;
            if self.system {
                return Err(Refusal::SystemMessage);
            }
        }
        Ok(!self.deleted)
    }

    /// Whether a reaction may be given: `new_emoji` when nobody reacted with
    /// it yet, `distinct` the emoji it holds now.
    pub fn react(&self, new_emoji: bool, distinct: usize) -> Result<(), Refusal> {
        if self.deleted {
            return Err(Refusal::Deleted);
        }
        match new_emoji && distinct >= MAX_EMOJI {
            true => Err(Refusal::TooManyEmoji),
            false => Ok(()),
        }
    }

    fn by_author(&self, actor: &UserId) -> Result<(), Refusal> {
        match actor == self.author {
            true => Ok(()),
            false => Err(Refusal::NotTheAuthor),
        }
    }
}

/// The one participant cap, wherever a conversation's size is decided.
pub fn within_cap(participants: usize, max: usize) -> Result<(), Refusal> {
    match participants > max {
        true => Err(Refusal::TooMany { max }),
        false => Ok(()),
    }
}

impl Group<'_> {
    fn member(&self, user: &UserId) -> bool {
        self.members.binary_search(user).is_ok()
    }

    /// Whom `actor` adds by asking for `users`: those not in it yet,
    /// sorted and distinct (empty: nothing changes), or why not. Any
    /// participant adds, to a group, within the cap.
    pub fn add(
        &self,
        actor: &UserId,
        users: &[UserId],
        max: usize,
        by: Authority,
    ) -> Result<Vec<UserId>, Refusal> {
        if by == Authority::Member && !self.member(actor) {
            return Err(Refusal::NotAParticipant);
        }
        if self.pair {
            return Err(Refusal::NotAGroup);
        }
        let mut added: Vec<UserId> = users
            .iter()
            .filter(|user| !self.member(user))
            .cloned()
            .collect();
        added.sort();
        added.dedup();
        if !added.is_empty() {
            within_cap(self.members.len() + added.len(), max)?;
        }
        Ok(added)
    }

    /// Whether `actor` may remove `user`: themselves (leaving), or anyone
    /// when they created the group (or speak for the application).
    pub fn remove(&self, actor: &UserId, user: &UserId, by: Authority) -> Result<(), Refusal> {
        if by == Authority::Member && !self.member(actor) {
            return Err(Refusal::NotAParticipant);
        }
        if self.pair {
            return Err(Refusal::NotAGroup);
        }
        if by == Authority::Member && user != actor && self.creator != Some(actor) {
            return Err(Refusal::NotTheCreator);
        }
        match self.member(user) {
            true => Ok(()),
            false => Err(Refusal::NoSuchParticipant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<UserId> {
        let mut ids: Vec<UserId> = names
            .iter()
            .map(|name| UserId::parse("user", name).unwrap())
            .collect();
        ids.sort();
        ids
    }

    fn user(name: &str) -> UserId {
        UserId::parse("user", name).unwrap()
    }

    #[test]
    fn any_participant_adds_to_a_group_within_the_cap_and_only_newcomers_count() {
        let members = ids(&["alice", "bob"]);
        let group = Group {
            pair: false,
            creator: Some(&members[0]),
            members: &members,
        };
        let asked = ids(&["carol", "bob", "carol"]);
        assert_eq!(
            group.add(&user("bob"), &asked, 3, Authority::Member),
            Ok(ids(&["carol"]))
        );
        assert_eq!(
            group.add(&user("bob"), &ids(&["alice"]), 2, Authority::Member),
            Ok(vec![])
        );
        assert_eq!(
            group.add(&user("bob"), &ids(&["carol", "dave"]), 3, Authority::Member),
            Err(Refusal::TooMany { max: 3 })
        );
        assert_eq!(
            group.add(&user("mallory"), &ids(&["carol"]), 9, Authority::Member),
            Err(Refusal::NotAParticipant)
        );
    }

    #[test]
    fn only_the_creator_removes_others_and_anyone_may_leave() {
        let members = ids(&["alice", "bob", "carol"]);
        let alice = user("alice");
        let group = Group {
            pair: false,
            creator: Some(&alice),
            members: &members,
        };
        assert_eq!(
            group.remove(&alice, &user("bob"), Authority::Member),
            Ok(())
        );
        assert_eq!(
            group.remove(&user("bob"), &user("bob"), Authority::Member),
            Ok(())
        );
        assert_eq!(
            group.remove(&user("bob"), &user("carol"), Authority::Member),
            Err(Refusal::NotTheCreator)
        );
        assert_eq!(
            group.remove(&alice, &user("zed"), Authority::Member),
            Err(Refusal::NoSuchParticipant)
        );
        let unknown_creator = Group {
            creator: None,
            ..group
        };
        assert_eq!(
            unknown_creator.remove(&alice, &user("bob"), Authority::Member),
            Err(Refusal::NotTheCreator),
            "a group from before creators were kept: nobody removes others"
        );
    }

    #[test]
    fn the_application_adds_and_removes_without_being_a_member_or_the_creator() {
        let members = ids(&["alice", "bob", "carol"]);
        let alice = user("alice");
        let group = Group {
            pair: false,
            creator: Some(&alice),
            members: &members,
        };
        let system = user("system");
        assert_eq!(
            group.add(&system, &ids(&["dave"]), 9, Authority::Service),
            Ok(ids(&["dave"]))
        );
        assert_eq!(
            group.add(&system, &ids(&["dave"]), 3, Authority::Service),
            Err(Refusal::TooMany { max: 3 }),
            "the cap holds"
        );
        assert_eq!(group.remove(&system, &alice, Authority::Service), Ok(()));
        assert_eq!(
            group.remove(&system, &user("zed"), Authority::Service),
            Err(Refusal::NoSuchParticipant)
        );
    }

    #[test]
    fn a_pair_keeps_its_two() {
        let members = ids(&["alice", "bob"]);
        let pair = Group {
            pair: true,
            creator: None,
            members: &members,
        };
        assert_eq!(
            pair.add(&user("alice"), &ids(&["carol"]), 9, Authority::Service),
            Err(Refusal::NotAGroup)
        );
        assert_eq!(
            pair.remove(&user("alice"), &user("alice"), Authority::Service),
            Err(Refusal::NotAGroup)
        );
    }

    #[test]
    fn only_the_author_edits_or_deletes_and_a_tombstone_stays_one() {
        let alice = user("alice");
        let message = Target {
            author: &alice,
            deleted: false,
            system: false,
        };
        assert_eq!(message.edit(&alice), Ok(()));
        assert_eq!(message.delete(&alice, Authority::Member), Ok(true));
        assert_eq!(message.edit(&user("bob")), Err(Refusal::NotTheAuthor));
        assert_eq!(
            message.delete(&user("bob"), Authority::Member),
            Err(Refusal::NotTheAuthor)
        );
        let tombstone = Target {
            deleted: true,
            ..message
        };
        assert_eq!(tombstone.edit(&alice), Err(Refusal::Deleted));
        assert_eq!(
            tombstone.delete(&alice, Authority::Member),
            Ok(false),
            "nothing to change"
        );
        assert_eq!(
            tombstone.delete(&user("bob"), Authority::Member),
            Err(Refusal::NotTheAuthor)
        );
        assert_eq!(
            message.delete(&user("system"), Authority::Service),
            Ok(true)
        );
        assert_eq!(
            tombstone.delete(&user("system"), Authority::Service),
            Ok(false)
        );
        let notice = Target {
            system: true,
            ..message
        };
        assert_eq!(
            notice.edit(&alice),
            Err(Refusal::SystemMessage),
            "its sender is no author"
        );
        assert_eq!(
            notice.delete(&alice, Authority::Member),
            Err(Refusal::SystemMessage)
        );
        assert_eq!(notice.delete(&user("system"), Authority::Service), Ok(true));
    }

    #[test]
    fn a_message_takes_twenty_distinct_emoji_and_more_of_those() {
        let alice = user("alice");
        let message = Target {
            author: &alice,
            deleted: false,
            system: false,
        };
        assert_eq!(message.react(true, MAX_EMOJI - 1), Ok(()));
        assert_eq!(message.react(true, MAX_EMOJI), Err(Refusal::TooManyEmoji));
        assert_eq!(message.react(false, MAX_EMOJI), Ok(()), "one already given");
        let tombstone = Target {
            deleted: true,
            ..message
        };
        assert_eq!(tombstone.react(false, 0), Err(Refusal::Deleted));
    }
}
