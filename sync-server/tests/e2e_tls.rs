//! End-to-end over TLS: the real server behind a TLS-terminating proxy (as behind an ingress),
//! and replicators whose `HttpTransport` speaks HTTPS through reqwest's rustls. A client that
//! trusts the server's CA syncs; one that does not gets a network error, stores nothing on
//! the server, and keeps its write pending.
//!
//! The certificates are test fixtures in `tests/tls/` (how they were made: its README).

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

mod support;

use std::sync::Arc;

use entidb_sync::{HttpTransport, SyncError, reqwest};
use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto};

const CA: &[u8] = include_bytes!("tls/ca.pem");
const CERT: &[u8] = include_bytes!("tls/server.pem");
const KEY: &[u8] = include_bytes!("tls/server.key");

/// Accepts TLS on a free port and forwards each connection to `upstream` (`host:port`).
/// Returns the port.
async fn tls_proxy(upstream: String) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(CERT)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to do.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicators_sync_over_https_with_a_trusted_ca_and_refuse_an_unknown_one() {
    let (dir, server) = app_server(None).await;
    let port = tls_proxy(server.addr()).await;
    let https = format!("https://localhost:{port}");

    // Trusts the test CA only: the certificate chains to it and names `localhost`.
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(CA).unwrap()])
        .build()
        .unwrap();
    let a_token = token("app", "tls-a", &["read", "write"], 600);
    let (a, ra) = client_with(
        &dir.path().join("a"),
        "app",
        "tls-a",
        &["notes"],
        Arc::new(HttpTransport::with_client(trusting, &https, &a_token)),
    )
    .await;
    let id = a
        .collection("notes")
        .insert(&json!({ "over": "tls" }))
        .await
        .unwrap();
    let report = ra.sync_now().await.unwrap();
    assert_eq!((report.captured, report.pushed), (1, 1), "{report:?}");

    // A plain client of the same server sees the write that came over TLS.
    let (b, rb) = client(
        &server.url,
        &dir.path().join("b"),
        "app",
        "plain-b",
        &["notes"],
    )
    .await;
    rb.sync_now().await.unwrap();
    assert_eq!(
        b.collection("notes")
            .get::<serde_json::Value>(id)
            .await
            .unwrap(),
        Some(json!({ "over": "tls" }))
    );

    // The default client trusts the system's roots, not the test CA: the handshake fails,
    // the replicator reports a network error (no panic), and nothing reaches the server.
    let c_token = token("app", "tls-c", &["read", "write"], 600);
    let (c, rc) = client_with(
        &dir.path().join("c"),
        "app",
        "tls-c",
        &["notes"],
        Arc::new(HttpTransport::new(&https, &c_token)),
    )
    .await;
    c.collection("notes")
        .insert(&json!({ "from": "an untrusting client" }))
        .await
        .unwrap();
    match rc.sync_now().await {
        Err(SyncError::Transport(e)) => {
            // The cause is named, not only "error sending request".
            let text = e.to_string();
            assert!(text.to_lowercase().contains("certificate"), "{text}");
        }
        other => panic!("expected a network error, got {other:?}"),
    }
    assert_eq!(rc.pending_ops().await.unwrap(), 1);
    assert!(!rc.status().online);
    rb.sync_now().await.unwrap();
    let notes = contents(&b, "notes").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
}
