//! Tokens from an identity provider: RS256, ES256 and EdDSA from a PEM
//! public key, a JWKS file chosen by `kid` and reloaded on change, and the
//! provider's `iss` and `aud`. Keys are generated here with openssl.

use crate::support::{PATIENCE, Process, code, tools_ready};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tonic::Code;

/// A key pair made by openssl: the private PEM and the public key's files.
struct KeyPair {
    algorithm: Algorithm,
    private_pem: Vec<u8>,
    public_pem: PathBuf,
    public_der: Vec<u8>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn generate(dir: &Path, name: &str, algorithm: Algorithm) -> KeyPair {
    let private = dir.join(format!("{name}.key"));
    let private_path = private.to_str().unwrap();
    let kind: &[&str] = match algorithm {
        Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "ED25519"],
    };
    openssl(&[&["genpkey"], kind, &["-out", private_path]].concat());
    let public_pem = dir.join(format!("{name}.pub"));
    openssl(&[
        "pkey",
        "-in",
        private_path,
        "-pubout",
        "-out",
        public_pem.to_str().unwrap(),
    ]);
    let public_der = openssl(&["pkey", "-in", private_path, "-pubout", "-outform", "DER"]);
    KeyPair {
        algorithm,
        private_pem: std::fs::read(&private).unwrap(),
        public_pem,
        public_der,
    }
}

impl KeyPair {
    fn sign(&self, kid: Option<&str>, claims: serde_json::Value) -> String {
        let key = match self.algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&self.private_pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.private_pem),
            _ => EncodingKey::from_ed_pem(&self.private_pem),
        }
        .unwrap();
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    /// The public key as a JWK (EC P-256 and Ed25519: the raw key ends the DER).
    fn jwk(&self, kid: &str) -> serde_json::Value {
        let der = &self.public_der;
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self.algorithm {
            Algorithm::ES256 => {
                let point = &der[der.len() - 64..];
                json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[..32]), "y": b64(&point[32..]), "kid": kid, "use": "sig" })
            }
            _ => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&der[der.len() - 32..]), "kid": kid, "use": "sig" })
            }
        }
    }
}

fn claims(user: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({ "sub": user, "exp": now + 600 })
}

/// Whether `token` gets through herald's gRPC door.
async fn accepted(herald: &Process, token: String) -> Result<(), tonic::Status> {
    let mut client = herald.client().await;
    let request = crate::support::authorized(
        herald::pb::ListConversationsRequest::default(),
        &format!("Bearer {token}"),
    );
    client.list_conversations(request).await.map(|_| ())
}

fn openssl_ready() -> bool {
    tools_ready(
        "openssl",
        std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok(),
    )
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_verify_with_the_providers_public_key() {
    if !openssl_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, algorithm) in [
        ("rsa", Algorithm::RS256),
        ("ec", Algorithm::ES256),
        ("ed", Algorithm::EdDSA),
    ] {
        let provider = generate(dir.path(), name, algorithm);
        let impostor = generate(dir.path(), &format!("{name}-impostor"), algorithm);
        let herald = Process::serve(dir.path(), |command| {
            command
                .arg("--jwt-public-key")
                .arg(&provider.public_pem)
                .args([
                    "--jwt-secret",
                    "own-secret-0123456789abcdef0123456789abcdef",
                ])
                .args(["--jwt-any-issuer", "--jwt-any-audience"]);
        })
        .await;

        assert!(
            accepted(&herald, provider.sign(None, claims("alice")))
                .await
                .is_ok(),
            "{name}"
        );
        assert_eq!(
            code(accepted(&herald, impostor.sign(None, claims("alice"))).await),
            Code::Unauthenticated,
            "{name}"
        );
        let own = crate::support::mint("own-secret-0123456789abcdef0123456789abcdef", "alice");
        assert!(
            accepted(&herald, own).await.is_ok(),
            "herald's own HS256 tokens still work"
        );
        herald.terminate().await;
    }
}

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid_and_the_file_is_reloaded_when_it_changes() {
    if !openssl_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ed, ec) = (
        generate(dir.path(), "ed", Algorithm::EdDSA),
        generate(dir.path(), "ec", Algorithm::ES256),
    );
    let jwks = dir.path().join("jwks.json");
    // The same Ed25519 key published twice more, for encryption and for
    // another algorithm: neither may verify a signature.
    let mut for_encryption = ed.jwk("ed-enc");
    for_encryption["use"] = json!("enc");
    let mut for_rs256 = ed.jwk("ed-rs");
    for_rs256["alg"] = json!("RS256");
    std::fs::write(
        &jwks,
        json!({ "keys": [ed.jwk("ed-1"), ec.jwk("ec-1"), for_encryption, for_rs256] }).to_string(),
    )
    .unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command
            .arg("--jwt-jwks")
            .arg(&jwks)
            .args(["--jwt-any-issuer", "--jwt-any-audience"]);
    })
    .await;
    for kid in ["ed-enc", "ed-rs"] {
        assert_eq!(
            code(accepted(&herald, ed.sign(Some(kid), claims("alice"))).await),
            Code::Unauthenticated,
            "{kid}"
        );
    }

    assert!(
        accepted(&herald, ed.sign(Some("ed-1"), claims("alice")))
            .await
            .is_ok()
    );
    assert!(
        accepted(&herald, ec.sign(Some("ec-1"), claims("alice")))
            .await
            .is_ok()
    );
    assert_eq!(
        code(accepted(&herald, ed.sign(Some("nope"), claims("alice"))).await),
        Code::Unauthenticated
    );

    // The provider rotates ed-1 out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&jwks, json!({ "keys": [ec.jwk("ec-1")] }).to_string()).unwrap();
    let rotated = async {
        while accepted(&herald, ed.sign(Some("ed-1"), claims("alice")))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, rotated)
        .await
        .expect("the removed key stops working");
    assert!(
        accepted(&herald, ec.sign(Some("ec-1"), claims("alice")))
            .await
            .is_ok()
    );
    herald.terminate().await;
}

#[tokio::test]
async fn the_providers_issuer_and_audience_are_required_when_configured() {
    if !openssl_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = generate(dir.path(), "ed", Algorithm::EdDSA);
    let herald = Process::serve(dir.path(), |command| {
        command
            .arg("--jwt-public-key")
            .arg(&provider.public_pem)
            .args([
                "--jwt-issuer",
                "https://idp.example",
                "--jwt-audience",
                "herald",
            ]);
    })
    .await;
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut claims = claims("alice");
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = json!(aud);
        }
        provider.sign(None, claims)
    };

    assert!(
        accepted(&herald, with(Some("https://idp.example"), Some("herald")))
            .await
            .is_ok()
    );
    for (what, token) in [
        (
            "wrong issuer",
            with(Some("https://evil.example"), Some("herald")),
        ),
        ("no issuer", with(None, Some("herald"))),
        (
            "wrong audience",
            with(Some("https://idp.example"), Some("other")),
        ),
        ("no audience", with(Some("https://idp.example"), None)),
    ] {
        assert_eq!(
            code(accepted(&herald, token).await),
            Code::Unauthenticated,
            "{what}"
        );
    }
    herald.terminate().await;
}

#[tokio::test]
async fn a_provider_without_issuer_and_audience_is_refused_at_start_unless_opted_out() {
    if !openssl_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = generate(dir.path(), "ed", Algorithm::EdDSA);
    let database = format!("sqlite://{}/herald.db", dir.path().display());
    for (flags, refusal) in [
        (vec![], "--jwt-issuer"),
        (
            vec!["--jwt-issuer", "https://idp.example"],
            "--jwt-audience",
        ),
    ] {
        let output = crate::support::herald_command()
            .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(["--database-url", &database, "--jwt-public-key"])
            .arg(&provider.public_pem)
            .args(flags)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(refusal), "{stderr}");
    }
}
