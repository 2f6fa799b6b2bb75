//! The HTTP transport gives up on a server that accepted the connection and never answers
//! (a connection a network change left half-open looks the same from the client): before,
//! it waited as long as the operating system kept the socket, holding the replicator.

use std::time::{Duration, Instant};

use entidb_sync::{HttpTransport, Method, Request, Transport};

#[tokio::test]
async fn a_silent_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, reads nothing, answers nothing, and keeps the socket open.
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let t = HttpTransport::with_timeouts(
        &format!("http://{addr}"),
        "TOKEN",
        Duration::from_secs(5),
        Duration::from_millis(300),
    );
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        t.send(Request {
            method: Method::Get,
            path: "/v2/db/app/pull?since=0".into(),
            body: None,
        }),
    )
    .await
    .expect("the transport gave up by itself");
    let err = r.expect_err("no answer");
    assert!(err.0.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(held);
    // The defaults are above the longest long poll a replicator asks for.
    assert!(entidb_sync::transport::READ_TIMEOUT > entidb_sync::MAX_WAIT);
}
