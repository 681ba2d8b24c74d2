//! Verification keys: herald's HS256 secret, and optionally an identity
//! provider's public key (RS256, ES256 or EdDSA, from a PEM file) or a JWKS
//! file whose keys are chosen by `kid` and which is reloaded when it changes.
//! The provider's `iss` and `aud` are checked when configured; herald's own
//! HS256 tokens (and stream tickets) are not the provider's, so they are not.

use super::{LEEWAY, Refusal, STREAM_AUDIENCE};
use crate::startup::start::StartError;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    jwk::{AlgorithmParameters, Jwk, JwkSet},
};
use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

/// How often, at most, the JWKS file is checked for changes.
const JWKS_CHECK: Duration = Duration::from_secs(1);

/// Where an identity provider's keys come from, and what its tokens must say.
#[derive(Clone, Debug, Default)]
pub struct IdentityConfig {
    /// A PEM public key (RSA, EC P-256 or Ed25519).
    pub public_key: Option<PathBuf>,
    /// A JWKS file.
    pub jwks: Option<PathBuf>,
    /// The `iss` the provider's tokens must carry.
    pub issuer: Option<String>,
    /// The `aud` the provider's tokens must carry.
    pub audience: Option<String>,
    /// Accept the provider's tokens whatever their `iss` (an explicit opt-out).
    pub any_issuer: bool,
    /// Accept the provider's tokens whatever their `aud` (an explicit opt-out).
    pub any_audience: bool,
}

impl IdentityConfig {
    pub fn is_configured(&self) -> bool {
        self.public_key.is_some() || self.jwks.is_some()
    }

    /// Refuses a provider whose tokens would be taken from any issuer or
    /// for any audience without the operator saying so: a token minted by
    /// the same provider for another service must not open herald.
    fn check(&self) -> Result<(), StartError> {
        if !self.is_configured() {
            return Ok(());
        }
        if self.issuer.is_none() && !self.any_issuer {
            return Err(StartError::config(
                "an identity provider needs --jwt-issuer (or --jwt-any-issuer to accept every issuer)",
            ));
        }
        if self.audience.is_none() && !self.any_audience {
            return Err(StartError::config(
                "an identity provider needs --jwt-audience (or --jwt-any-audience to accept every audience)",
            ));
        }
        Ok(())
    }
}

pub(super) struct Keys {
    pub encoding: EncodingKey,
    secret: DecodingKey,
    public: Option<(Algorithm, DecodingKey)>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Keys {
    pub fn load(secret: &[u8], identity: &IdentityConfig) -> Result<Self, StartError> {
        identity.check()?;
        let public = match &identity.public_key {
            Some(path) => Some(
                public_key(&std::fs::read(path).map_err(|error| StartError::read(path, error))?)
                    .ok_or_else(|| StartError::Unusable {
                        path: path.clone(),
                        expected: "not an RSA, EC P-256 or Ed25519 public key in PEM".into(),
                        source: None,
                    })?,
            ),
            None => None,
        };
        let jwks = match &identity.jwks {
            Some(path) => Some(Jwks::load(path.clone())?),
            None => None,
        };
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            secret: DecodingKey::from_secret(secret),
            public,
            jwks,
            issuer: identity.issuer.clone(),
            audience: identity.audience.clone(),
        })
    }

    /// The key and the checks for a token with `header`.
    pub fn for_header(&self, header: &Header) -> Result<(DecodingKey, Validation), Refusal> {
        if header.alg == Algorithm::HS256 {
            return Ok((
                self.secret.clone(),
                validation(Algorithm::HS256, None, None),
            ));
        }
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(Refusal::Algorithm);
        }
        let key = match (&self.jwks, &self.public) {
            (Some(jwks), _) if header.kid.is_some() => {
                jwks.key(header.kid.as_deref(), header.alg)?
            }
            (_, Some((alg, key))) if *alg == header.alg => key.clone(),
            (Some(jwks), _) => jwks.key(None, header.alg)?,
            _ => return Err(Refusal::Algorithm),
        };
        let rules = validation(header.alg, self.issuer.as_deref(), self.audience.as_deref());
        Ok((key, rules))
    }
}

fn validation(alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    // `Validation::new` refuses `alg: none` and every other algorithm.
    let mut rules = Validation::new(alg);
    let mut required = vec!["exp", "sub"];
    required.extend(issuer.map(|_| "iss"));
    required.extend(audience.map(|_| "aud"));
    rules.set_required_spec_claims(&required);
    rules.leeway = LEEWAY.as_secs();
    // A token not valid yet is refused like an expired one.
    rules.validate_nbf = true;
    match audience {
        Some(audience) => rules.set_audience(&[audience, STREAM_AUDIENCE]),
        None => rules.validate_aud = false,
    }
    if let Some(issuer) = issuer {
        rules.set_issuer(&[issuer]);
    }
    rules
}

/// A PEM public key and the algorithm it verifies.
fn public_key(pem: &[u8]) -> Option<(Algorithm, DecodingKey)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((Algorithm::ES256, key));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|key| (Algorithm::EdDSA, key))
}

/// A JWKS file, reloaded when its modification time changes.
struct Jwks {
    path: PathBuf,
    state: Mutex<JwksState>,
}

struct JwksState {
    checked: Instant,
    modified: Option<SystemTime>,
    /// Every key of the file, parsed once per change of the file.
    keys: Vec<ParsedKey>,
}

/// A JWK and the verification key made from it.
struct ParsedKey {
    jwk: Jwk,
    key: DecodingKey,
}

/// The keys of `set` that can verify something; the others are skipped
/// (and logged) rather than failing every token.
fn parse(set: JwkSet) -> Vec<ParsedKey> {
    set.keys
        .into_iter()
        .filter_map(|jwk| match DecodingKey::from_jwk(&jwk) {
            Ok(key) => Some(ParsedKey { jwk, key }),
            Err(error) => {
                tracing::warn!(%error, kid = ?jwk.common.key_id, "skipping a JWKS key herald cannot use");
                None
            }
        })
        .collect()
}

impl Jwks {
    fn load(path: PathBuf) -> Result<Self, StartError> {
        let (modified, set) = read_jwks(&path)?;
        let state = JwksState {
            checked: Instant::now(),
            modified,
            keys: parse(set),
        };
        Ok(Self {
            path,
            state: Mutex::new(state),
        })
    }

    /// The key named `kid` (or the only key of the family of `alg`).
    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, Refusal> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refresh(&mut state);
        let fits = |parsed: &&ParsedKey| usable_for(&parsed.jwk, alg);
        let parsed = match kid {
            Some(kid) => state
                .keys
                .iter()
                .filter(|parsed| parsed.jwk.common.key_id.as_deref() == Some(kid))
                .find(fits)
                .ok_or(Refusal::Signature)?,
            None => {
                let mut candidates = state.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    _ => return Err(Refusal::Signature),
                }
            }
        };
        Ok(parsed.key.clone())
    }

    fn refresh(&self, state: &mut JwksState) {
        if state.checked.elapsed() < JWKS_CHECK {
            return;
        }
        state.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified == state.modified {
            return;
        }
        match read_jwks(&self.path) {
            Ok((modified, set)) => {
                tracing::info!(path = %self.path.display(), keys = set.keys.len(), "JWKS reloaded");
                state.modified = modified;
                state.keys = parse(set);
            }
            Err(error) => {
                tracing::warn!(
                    error = error.chain(),
                    "JWKS reload failed; keeping the previous keys"
                )
            }
        }
    }
}

fn read_jwks(path: &PathBuf) -> Result<(Option<SystemTime>, JwkSet), StartError> {
    let text = std::fs::read_to_string(path).map_err(|error| StartError::read(path, error))?;
    let set = serde_json::from_str(&text).map_err(|error| StartError::Unusable {
        path: path.clone(),
        expected: "not a JWKS".into(),
        source: Some(Box::new(error)),
    })?;
    let modified = std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok();
    Ok((modified, set))
}

/// Whether a JWK may verify a token signed with `alg`: its key type
/// (`kty`) fits, and its `use` and `alg`, when given, say so. A key the
/// provider published for encryption, or for another algorithm, never
/// verifies a signature.
fn usable_for(jwk: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::{KeyAlgorithm, PublicKeyUse};
    let kty = matches!(
        (&jwk.algorithm, alg),
        (AlgorithmParameters::RSA(_), Algorithm::RS256)
            | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
            | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    let usage = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    let algorithm = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    kty && usage && algorithm
}
