//! TLS on both listeners with a certificate made here: a gRPC client over
//! TLS, and an SSE client (curl) that gets HTTP/2 by ALPN.

use crate::support::{PATIENCE, Process, authorized, mint, tools_ready};
use herald::pb;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const SECRET: &str = "tls-secret-0123456789abcdef0123456789abcdef";

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test CA and a certificate it signed for localhost and 127.0.0.1, in
/// `dir`: `ca.pem`, `cert.pem`, `key.pem`.
fn certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-days",
                "1",
                "-subj",
                "/CN=herald test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"],
            &ec[..],
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_sse_work_over_tls_and_browsers_get_http2() {
    let tools = ["openssl", "curl"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok()
    });
    if !tools_ready("openssl and curl", tools) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    let herald = Process::serve(dir.path(), |command| {
        command
            .args(["--jwt-secret", SECRET])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--header-timeout", "1s"]);
    })
    .await;
    let grpc_port = herald.grpc.rsplit(':').next().unwrap().to_owned();
    let http_port = herald.http.rsplit(':').next().unwrap().to_owned();

    // A client that never starts its handshake is let go, on both ports.
    for address in [&herald.http, &herald.grpc] {
        use tokio::io::AsyncReadExt;
        let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "{address}: {closed:?}"
        );
    }

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{grpc_port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection to the gRPC port");
    let mut client = pb::messenger_client::MessengerClient::new(channel);
    let alice = format!("Bearer {}", mint(SECRET, "alice"));
    let pair = pb::CreateConversationRequest {
        participant_ids: vec!["bob".into()],
    };
    let conversation = client
        .create_conversation(authorized(pair, &alice))
        .await
        .unwrap()
        .into_inner();

    let url = format!(
        "https://localhost:{http_port}/api/messages?token={}",
        mint(SECRET, "bob")
    );
    // Browsers get HTTP/2; an HTTP/1.1 client is served by herald's own
    // stream writer (not hyper), under TLS all the same.
    let curl = |http_version: &str| {
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-N",
                http_version,
                "--max-time",
                "4",
                "-w",
                "\nversion=%{http_version}\n",
                "-D",
                "-",
            ])
            .args([
                "--resolve",
                &format!("localhost:{http_port}:127.0.0.1"),
                "--cacert",
            ])
            .arg(&ca)
            .args(["-H", "Accept: text/event-stream", &url])
            .kill_on_drop(true)
            .output()
    };
    let send = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.id.clone(),
            content: "over TLS".into(),
            ..Default::default()
        };
        client
            .create_message(authorized(body, &alice))
            .await
            .unwrap()
            .into_inner()
    };
    let (h2, h1, sent) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(curl("--http2"), curl("--http1.1"), send)
    })
    .await
    .unwrap();

    for (output, version) in [(h2, "2"), (h1, "1.1")] {
        let output = String::from_utf8_lossy(&output.unwrap().stdout).into_owned();
        assert!(output.contains(&format!("id: {}\n", sent.id)), "{output}");
        assert!(
            output.contains(&format!("version={version}\n")),
            "HTTP/{version} over TLS: {output}"
        );
        assert!(
            output.contains("strict-transport-security: max-age="),
            "HSTS under TLS: {output}"
        );
        // herald's own writer, not hyper, answers an HTTP/1.1 stream.
        let own_writer = output.contains("connection: close");
        assert_eq!(own_writer, version == "1.1", "{output}");
    }
    herald.terminate().await;
}
