//! The rules of changing a conversation, as pure functions of the state
//! they need: the store locks, reads that state inside its transaction,
//! asks here, and writes what the answer says. Unit-tested without a
//! database; the rules of message changes and of the Admin service belong
//! here too.

use super::UserId;
use crate::error::Error;

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
    ) -> Result<Vec<UserId>, Refusal> {
        if !self.member(actor) {
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
    /// when they created the group.
    pub fn remove(&self, actor: &UserId, user: &UserId) -> Result<(), Refusal> {
        if !self.member(actor) {
            return Err(Refusal::NotAParticipant);
        }
        if self.pair {
            return Err(Refusal::NotAGroup);
        }
        if user != actor && self.creator != Some(actor) {
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
        assert_eq!(group.add(&user("bob"), &asked, 3), Ok(ids(&["carol"])));
        assert_eq!(group.add(&user("bob"), &ids(&["alice"]), 2), Ok(vec![]));
        assert_eq!(
            group.add(&user("bob"), &ids(&["carol", "dave"]), 3),
            Err(Refusal::TooMany { max: 3 })
        );
        assert_eq!(
            group.add(&user("mallory"), &ids(&["carol"]), 9),
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
        assert_eq!(group.remove(&alice, &user("bob")), Ok(()));
        assert_eq!(group.remove(&user("bob"), &user("bob")), Ok(()));
        assert_eq!(
            group.remove(&user("bob"), &user("carol")),
            Err(Refusal::NotTheCreator)
        );
        assert_eq!(
            group.remove(&alice, &user("zed")),
            Err(Refusal::NoSuchParticipant)
        );
        let unknown_creator = Group {
            creator: None,
            ..group
        };
        assert_eq!(
            unknown_creator.remove(&alice, &user("bob")),
            Err(Refusal::NotTheCreator),
            "a group from before creators were kept: nobody removes others"
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
            pair.add(&user("alice"), &ids(&["carol"]), 9),
            Err(Refusal::NotAGroup)
        );
        assert_eq!(
            pair.remove(&user("alice"), &user("alice")),
            Err(Refusal::NotAGroup)
        );
    }
}
