//! Service keys: how the application's backend authenticates to the Admin
//! service. A key is `hk_` and 43 characters of random base64url (256 bits)
//! shown once by `herald key create`; the database keeps only its SHA-256
//! (a fast hash is enough for a random secret of that size: there is
//! nothing to guess). Every node keeps the active keys in memory
//! ([`KeyRing`], refreshed from the store each second by
//! `engine::moderation`), so checking a key costs no database read, and a
//! revoked key stops working everywhere within that refresh.

use crate::domain::moderation::{Scope, Scopes};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What every service key starts with: a user token never does (a JWT
/// starts with `ey`), so the two cannot be mistaken for each other.
pub const KEY_PREFIX: &str = "hk_";
/// The length of a key herald makes.
const KEY_LEN: usize = KEY_PREFIX.len() + 43;

/// A verified service key: its name (for logs and metering: never the
/// key) and what it may do.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub scopes: Scopes,
}

impl Service {
    /// Whether this key may do what `scope` allows; the refusal names the
    /// scope it lacks.
    pub fn allow(&self, scope: Scope) -> Result<(), crate::error::Error> {
        match self.scopes.allow(scope) {
            true => Ok(()),
            false => Err(crate::error::Error::Forbidden(scope.missing())),
        }
    }
}

/// An active key as a node keeps it.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub name: Arc<str>,
    pub hash: [u8; 32],
    pub scopes: Scopes,
}

/// The active keys of this node.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<StoredKey>,
}

impl KeyRing {
    pub fn new(keys: Vec<StoredKey>) -> Self {
        Self { keys }
    }

    /// The key `presented` is, if it is an active one. Every stored hash is
    /// compared in full, in constant time, whatever matches: how long this
    /// takes says nothing about which key, or how much of one, matched.
    pub fn find(&self, presented: &str) -> Option<Service> {
        if presented.len() != KEY_LEN || !presented.starts_with(KEY_PREFIX) {
            return None;
        }
        let hash = hash(presented);
        let mut found = None;
        for key in &self.keys {
            let difference = key
                .hash
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if std::hint::black_box(difference) == 0 {
                found = Some(Service {
                    name: key.name.clone(),
                    scopes: key.scopes,
                });
            }
        }
        found
    }
}

/// A new random key.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a key, as the database keeps it.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// [`hash`] in hexadecimal, the database's form.
pub fn hash_hex(key: &str) -> String {
    hash(key).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The hash the database keeps, read back; `None` for anything else.
pub fn parse_hash_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * index..2 * index + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_found_by_itself_only() {
        let key = generate();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_LEN);
        let ring = KeyRing::new(vec![StoredKey {
            name: "backend".into(),
            hash: parse_hash_hex(&hash_hex(&key)).unwrap(),
            scopes: Scopes::parse("publish").unwrap(),
        }]);
        let found = ring.find(&key).unwrap();
        assert_eq!(&*found.name, "backend");
        assert!(found.allow(Scope::Publish).is_ok());
        assert!(found.allow(Scope::Moderate).is_err());
        assert!(ring.find(&generate()).is_none());
        let mut altered = key.clone();
        altered.pop();
        altered.push(if key.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.find(&altered).is_none());
        assert!(ring.find("hk_short").is_none());
    }

    #[test]
    fn a_hash_that_differs_only_in_its_last_byte_is_no_match() {
        let key = generate();
        let mut hash = hash(&key);
        hash[31] ^= 1;
        let ring = KeyRing::new(vec![StoredKey {
            name: "backend".into(),
            hash,
            scopes: Scopes::parse("admin").unwrap(),
        }]);
        assert!(ring.find(&key).is_none());
    }
}
