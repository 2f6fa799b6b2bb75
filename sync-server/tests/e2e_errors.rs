//! End-to-end: every kind of bad request gets its documented status and error code, and
//! nothing is stored.

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

mod support;

use serde_json::{Value, json};
use support::*;

struct Call {
    status: u16,
    body: Value,
}

async fn send(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Call {
    let c = reqwest::Client::new();
    let mut req = match method {
        "GET" => c.get(format!("{url}{path}")),
        "DELETE" => c.delete(format!("{url}{path}")),
        _ => c.post(format!("{url}{path}")),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Call { status, body }
}

/// Asserts that `call` was answered `status` with the error code `code`.
#[track_caller]
fn expect_error(call: &Call, status: u16, code: &str) {
    assert_eq!(
        (call.status, call.body["code"].as_str()),
        (status, Some(code)),
        "{}",
        call.body
    );
}

fn expired_token() -> String {
    token_expiring_at(
        "app",
        "c1",
        &["write"],
        entidb_server::auth::now_secs() - 3600,
    )
}

fn push_body(client: &str, collection: &str, n: usize) -> Vec<u8> {
    let ops: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "op_id": i + 1,
                "collection": collection,
                "id": format!("0190a5c2-0000-7000-8000-{:012x}", i + 1),
                "kind": "put",
                "doc": {"i": i},
                "base_version": null,
                "hlc": {"millis": 1, "counter": i, "node": client}
            })
        })
        .collect();
    serde_json::to_vec(&json!({"client_id": client, "ops": ops})).unwrap()
}

/// A CBOR push of one put, its document given as `doc` (tag 24 over the document's
/// encoding, or in version 1's form: the document in place).
fn cbor_push(client: &str, op_id: u64, doc: entidb::cbor::Value) -> Vec<u8> {
    use entidb::cbor::Value as V;
    let op = V::map([
        ("op_id", V::from(op_id)),
        ("collection", V::from("notes")),
        ("id", V::Bytes(vec![op_id as u8; 16])),
        ("kind", V::from("put")),
        ("doc", doc),
        ("base_version", V::Null),
        (
            "hlc",
            V::map([
                ("millis", V::from(1)),
                ("counter", V::from(0)),
                ("node", V::from(client)),
            ]),
        ),
    ]);
    entidb::cbor::encode(&V::map([
        ("client_id", V::from(client)),
        ("ops", V::array([op])),
    ]))
}

fn tag24(inner: &[u8]) -> entidb::cbor::Value {
    entidb::cbor::Value::Tag(24, Box::new(entidb::cbor::Value::Bytes(inner.to_vec())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_documented_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        None,
        &["--max-body-bytes", "4096", "--max-ops-per-push", "10"],
    );
    server.create_db("app").await;
    server.create_db("other").await;
    let url = &server.url;
    let json_ct = Some("application/json");
    let good = token("app", "c1", &["read", "write"], 3600);
    let push = "/v2/db/app/push";

    let cases: Vec<(&str, Call, u16, &str)> = vec![
        (
            "no token",
            send(
                url,
                "POST",
                push,
                None,
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            401,
            "unauthorized",
        ),
        (
            "garbage token",
            send(
                url,
                "POST",
                push,
                Some("abc.def.ghi"),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            401,
            "unauthorized",
        ),
        (
            "expired token",
            send(
                url,
                "POST",
                push,
                Some(&expired_token()),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            401,
            "unauthorized",
        ),
        (
            "token signed with another key",
            send(
                url,
                "POST",
                push,
                Some(
                    &entidb_server::mint_token(
                        &entidb_server::config::KeyConfig {
                            id: KEY_ID.into(),
                            secret: "another-secret-0123456789abcdef0123".into(),
                        },
                        "app",
                        "c1",
                        &["write".into()],
                        3600,
                    )
                    .unwrap(),
                ),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            401,
            "unauthorized",
        ),
        (
            "wrong database",
            send(
                url,
                "POST",
                push,
                Some(&token("other", "c1", &["write"], 3600)),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            403,
            "forbidden",
        ),
        (
            "client id differs from the token",
            send(
                url,
                "POST",
                push,
                Some(&good),
                json_ct,
                push_body("c2", "notes", 1),
            )
            .await,
            403,
            "forbidden",
        ),
        (
            "read-only token pushes",
            send(
                url,
                "POST",
                push,
                Some(&token("app", "c1", &["read"], 3600)),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            403,
            "forbidden",
        ),
        (
            "write scope for another collection",
            send(
                url,
                "POST",
                push,
                Some(&token("app", "c1", &["write:tasks"], 3600)),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            403,
            "forbidden",
        ),
        (
            "malformed CBOR",
            send(
                url,
                "POST",
                push,
                Some(&good),
                Some("application/cbor"),
                vec![0xa1, 0x61, 0x78, 0xff],
            )
            .await,
            400,
            "malformed_body",
        ),
        (
            "malformed JSON",
            send(
                url,
                "POST",
                push,
                Some(&good),
                json_ct,
                b"{\"client_id\": ".to_vec(),
            )
            .await,
            400,
            "malformed_body",
        ),
        (
            "document with a duplicate map key",
            send(
                url,
                "POST",
                push,
                Some(&good),
                json_ct,
                br#"{"client_id":"c1","ops":[{"op_id":1,"collection":"notes","id":"0190a5c2-0000-7000-8000-000000000001","kind":"put","doc":{"a":1,"a":2},"base_version":null,"hlc":{"millis":1,"counter":0,"node":"c1"}}]}"#.to_vec(),
            )
            .await,
            400,
            "malformed_body",
        ),
        (
            "document given as tag 24 over bytes that are not one CBOR item",
            send(
                url,
                "POST",
                push,
                Some(&good),
                Some("application/cbor"),
                cbor_push("c1", 1, tag24(&[0x82, 0x01])),
            )
            .await,
            400,
            "malformed_body",
        ),
        (
            "unsupported media type",
            send(
                url,
                "POST",
                push,
                Some(&good),
                Some("text/plain"),
                b"hi".to_vec(),
            )
            .await,
            415,
            "unsupported_media_type",
        ),
        (
            "oversized body",
            send(url, "POST", push, Some(&good), json_ct, vec![b' '; 10_000]).await,
            413,
            "payload_too_large",
        ),
        (
            "too many ops",
            send(
                url,
                "POST",
                push,
                Some(&good),
                json_ct,
                push_body("c1", "notes", 11),
            )
            .await,
            400,
            "too_many_ops",
        ),
        (
            "reserved collection",
            send(
                url,
                "POST",
                push,
                Some(&good),
                json_ct,
                push_body("c1", "_sync.clients", 1),
            )
            .await,
            400,
            "bad_request",
        ),
        (
            "unknown database",
            send(
                url,
                "POST",
                "/v2/db/nope/push",
                Some(&token("*", "c1", &["write"], 3600)),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            404,
            "not_found",
        ),
        (
            "admin endpoint without admin scope",
            send(url, "GET", "/v2/admin/databases", Some(&good), None, vec![]).await,
            403,
            "forbidden",
        ),
        (
            "bad query string",
            send(
                url,
                "GET",
                "/v2/db/app/pull?since=minus-one",
                Some(&good),
                None,
                vec![],
            )
            .await,
            400,
            "bad_request",
        ),
        (
            "cursor ahead of the server (the database was restored or created again)",
            send(
                url,
                "GET",
                "/v2/db/app/pull?since=999999",
                Some(&good),
                None,
                vec![],
            )
            .await,
            410,
            "rebootstrap",
        ),
        (
            "unknown route",
            send(url, "GET", "/v2/whatever", Some(&good), None, vec![]).await,
            404,
            "not_found",
        ),
        (
            "a push in protocol version 1 (documents in place)",
            send(
                url,
                "POST",
                "/v1/db/app/push",
                Some(&good),
                json_ct,
                push_body("c1", "notes", 1),
            )
            .await,
            404,
            "not_found",
        ),
    ];
    let (_, v1, _, _) = cases.last().unwrap();
    assert!(
        v1.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("version 2") && m.contains("upgrade the client")),
        "{}",
        v1.body
    );
    for (what, call, status, code) in &cases {
        assert_eq!(call.status, *status, "{what}: {}", call.body);
        assert_eq!(call.body["code"], *code, "{what}: {}", call.body);
        assert!(
            call.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }

    // Nothing was stored by any of them.
    let pull = send(
        url,
        "GET",
        "/v2/db/app/pull?since=0",
        Some(&good),
        None,
        vec![],
    )
    .await;
    assert_eq!(pull.status, 200);
    assert_eq!(pull.body["changes"], json!([]), "{}", pull.body);

    // Collection names the engine would refuse to write, in ops that would write nothing to
    // the collection (a delete of nothing; a put that loses a conflict): refused before the
    // transaction, so no sync state or conflict record names them. And a client id longer
    // than a transaction's origin may be.
    let op = |collection: &str, kind: &str, base: Option<u64>| {
        let mut op = json!({"op_id": 1, "collection": collection,
            "id": "0190a5c2-0000-7000-8000-000000000001", "kind": kind,
            "base_version": base, "hlc": {"millis": 1, "counter": 0, "node": "c1"}});
        if kind == "put" {
            op["doc"] = json!({"x": 1});
        }
        serde_json::to_vec(&json!({"client_id": "c1", "ops": [op]})).unwrap()
    };
    let long_name = "n".repeat(300);
    let long_client = "c".repeat(300);
    let long_client_push =
        serde_json::to_vec(&json!({"client_id": long_client, "ops": []})).unwrap();
    for (what, body, tok) in [
        ("an empty name", op("", "delete", None), good.clone()),
        (
            "a name over 255 bytes",
            op(&long_name, "delete", None),
            good.clone(),
        ),
        (
            "a control character",
            op("a\u{1}b", "put", Some(5)),
            good.clone(),
        ),
        (
            "a client id over 255 bytes",
            long_client_push,
            token("app", &long_client, &["write"], 3600),
        ),
    ] {
        let r = send(url, "POST", push, Some(&tok), json_ct, body).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("bad_request")),
            "{what}: {}",
            r.body
        );
    }
    let conflicts = send(
        url,
        "GET",
        "/v2/db/app/conflicts",
        Some(&good),
        None,
        vec![],
    )
    .await;
    assert_eq!(conflicts.body["conflicts"], json!([]), "{}", conflicts.body);

    // A path that does not decode gets an error body like every other error (it was plain
    // text).
    for path in ["/v2/db/%FF/pull?since=0", "/v2/admin/databases/%FF%FE"] {
        let method = if path.starts_with("/v2/admin") {
            "DELETE"
        } else {
            "GET"
        };
        let r = send(
            url,
            method,
            path,
            Some(&Server::admin_token()),
            None,
            vec![],
        )
        .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("bad_request")),
            "{path}: {}",
            r.body
        );
    }

    // Scopes: `admin` alone reads nothing and pushes nothing, not even an empty push
    // (which would answer the cursor) or a push that asks for a page; a scope that only
    // starts like `read` is no read scope; a read scope cannot push an empty batch.
    let admin_only = token("app", "c1", &["admin"], 3600);
    let readonly = token("app", "c1", &["readonly"], 3600);
    let reader = token("app", "c1", &["read"], 3600);
    let empty_push = serde_json::to_vec(&json!({"client_id": "c1", "ops": []})).unwrap();
    for (what, method, path, tok, body) in [
        (
            "admin pulls",
            "GET",
            "/v2/db/app/pull?since=0",
            &admin_only,
            vec![],
        ),
        (
            "admin bootstraps",
            "GET",
            "/v2/db/app/bootstrap",
            &admin_only,
            vec![],
        ),
        (
            "admin reads conflicts",
            "GET",
            "/v2/db/app/conflicts",
            &admin_only,
            vec![],
        ),
        (
            "admin opens events",
            "GET",
            "/v2/db/app/events",
            &admin_only,
            vec![],
        ),
        (
            "admin pushes nothing",
            "POST",
            push,
            &admin_only,
            empty_push.clone(),
        ),
        (
            "admin pushes nothing, asking for a page",
            "POST",
            "/v2/db/app/push?since=0",
            &admin_only,
            empty_push.clone(),
        ),
        (
            "'readonly' pulls",
            "GET",
            "/v2/db/app/pull?since=0",
            &readonly,
            vec![],
        ),
        (
            "a reader pushes nothing",
            "POST",
            push,
            &reader,
            empty_push.clone(),
        ),
    ] {
        let ct = (method == "POST").then_some("application/json");
        let r = send(url, method, path, Some(tok), ct, body).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (403, Some("forbidden")),
            "{what}: {}",
            r.body
        );
    }

    // A push that asks for the page after a cursor ahead of the server (its database was
    // restored or created again) gets 410 before anything is stored: applied, it could take
    // the sequence past that cursor, and the client's pull would then find nothing wrong.
    let r = send(
        url,
        "POST",
        &format!("{push}?since=999999"),
        Some(&good),
        json_ct,
        push_body("c1", "notes", 2),
    )
    .await;
    expect_error(&r, 410, "rebootstrap");
    // One that asks for a page size without a cursor, or names an unknown parameter, is
    // refused before anything is stored (the good push below is then applied, not
    // `duplicate`).
    for (query, says) in [("limit=5", "give since too"), ("sinse=0", "unknown field")] {
        let r = send(
            url,
            "POST",
            &format!("{push}?{query}"),
            Some(&good),
            json_ct,
            push_body("c1", "notes", 2),
        )
        .await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.body["code"], "bad_request", "{query}");
        assert!(
            r.body["message"].as_str().unwrap().contains(says),
            "{query}: {}",
            r.body
        );
    }

    // A good push still works afterwards, and JSON and CBOR answers agree.
    let ok = send(
        url,
        "POST",
        push,
        Some(&good),
        json_ct,
        push_body("c1", "notes", 2),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // Op 1 too: no refused push above recorded an op id.
    assert_eq!(ok.body["results"][0]["status"], "applied", "{}", ok.body);
    assert_eq!(ok.body["results"][1]["status"], "applied");
    let cbor = reqwest::Client::new()
        .get(format!("{url}/v2/db/app/pull?since=0"))
        .bearer_auth(&good)
        .header("accept", "application/cbor")
        .send()
        .await
        .unwrap();
    assert_eq!(cbor.headers()["content-type"], "application/cbor");
    let bytes = cbor.bytes().await.unwrap();
    let decoded: entidb_sync::wire::PullResponse =
        entidb_sync::wire::Format::Cbor.decode(&bytes).unwrap();
    assert_eq!(decoded.changes.len(), 2);
    assert_eq!(decoded.cursor, ok.body["cursor"].as_u64().unwrap());

    // CBOR pushes: the document as tag 24 over its (here non-canonical) encoding, and in
    // place as a hand-written client may send it. Both are stored as the document itself.
    use entidb::cbor::Value as V;
    let docs = [
        // {"a": 1} with the 1 in a two-byte head.
        (tag24(&[0xa1, 0x61, 0x61, 0x18, 0x01]), V::map([("a", 1)])),
        (V::map([("b", 2)]), V::map([("b", 2)])),
    ];
    for (i, (sent, _)) in docs.iter().enumerate() {
        let r = send(
            url,
            "POST",
            push,
            Some(&good),
            Some("application/cbor"),
            cbor_push("c1", 3 + i as u64, sent.clone()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["results"][0]["status"], "applied", "{}", r.body);
    }
    let since = decoded.cursor;
    let pulled = reqwest::Client::new()
        .get(format!("{url}/v2/db/app/pull?since={since}"))
        .bearer_auth(&good)
        .header("accept", "application/cbor")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let pulled: entidb_sync::wire::PullResponse =
        entidb_sync::wire::Format::Cbor.decode(&pulled).unwrap();
    let got: Vec<V> = pulled
        .changes
        .iter()
        .map(|c| c.doc.as_ref().unwrap().to_value().unwrap())
        .collect();
    assert_eq!(got, docs.clone().map(|(_, stored)| stored));
    // Stored canonical: the bytes are the canonical encoding, not the bytes as sent.
    for (change, (_, stored)) in pulled.changes.iter().zip(&docs) {
        assert_eq!(
            change.doc.as_ref().unwrap().as_bytes(),
            entidb::cbor::encode(stored)
        );
    }
}

/// A browser sends a preflight before a push (its `Authorization` and `Content-Type` are not
/// "simple" headers). An allowed origin gets an answer that names `authorization`: the
/// Fetch standard leaves it out of a wildcard `Access-Control-Allow-Headers: *`, so a
/// browser that follows it would refuse the push (Chromium 156 still accepts the wildcard). Another origin gets no CORS headers at all. The browser test
/// (sync-client/browser-test) runs the same through Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_the_listed_origin_with_its_authorization_header() {
    let (_dir, server) = app_server(Some(r#"cors_origins = ["http://app.test:8080"]"#)).await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v2/db/app/push", server.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,accept",
            )
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    let ok = preflight("http://app.test:8080").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        header(&ok, "access-control-allow-origin").as_deref(),
        Some("http://app.test:8080")
    );
    let allowed = header(&ok, "access-control-allow-headers").unwrap_or_default();
    for h in ["authorization", "content-type", "accept"] {
        assert!(
            allowed.split(',').any(|a| a.trim() == h),
            "{h} missing from {allowed:?}"
        );
    }
    assert!(header(&ok, "access-control-max-age").is_some());
    let other = preflight("http://evil.test").await.unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    // The actual request from the allowed origin carries the origin back.
    let token = token("app", "web", &["read"], 60);
    let pull = reqwest::Client::new()
        .get(format!("{}/v2/db/app/pull?since=0", server.url))
        .bearer_auth(token)
        .header("origin", "http://app.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), 200, "{}", pull.text().await.unwrap());
    assert_eq!(
        header(&pull, "access-control-allow-origin").as_deref(),
        Some("http://app.test:8080")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_lists_and_deletes_databases() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    let admin = Server::admin_token();
    let url = &server.url;
    let json_ct = Some("application/json");
    let create = |name: &str| serde_json::to_vec(&json!({ "name": name })).unwrap();
    assert_eq!(
        send(
            url,
            "POST",
            "/v2/admin/databases",
            Some(&admin),
            json_ct,
            create("one")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            url,
            "POST",
            "/v2/admin/databases",
            Some(&admin),
            json_ct,
            create("two")
        )
        .await
        .status,
        200
    );
    let dup = send(
        url,
        "POST",
        "/v2/admin/databases",
        Some(&admin),
        json_ct,
        create("one"),
    )
    .await;
    assert_eq!(
        (dup.status, dup.body["code"].as_str()),
        (409, Some("already_exists"))
    );
    let bad = send(
        url,
        "POST",
        "/v2/admin/databases",
        Some(&admin),
        json_ct,
        create("../etc"),
    )
    .await;
    assert_eq!(
        (bad.status, bad.body["code"].as_str()),
        (400, Some("bad_request"))
    );
    let list = send(
        url,
        "GET",
        "/v2/admin/databases",
        Some(&admin),
        None,
        vec![],
    )
    .await;
    let names: Vec<&str> = list.body["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        send(
            url,
            "DELETE",
            "/v2/admin/databases/one",
            Some(&admin),
            None,
            vec![]
        )
        .await
        .status,
        200
    );
    let gone = send(
        url,
        "DELETE",
        "/v2/admin/databases/one",
        Some(&admin),
        None,
        vec![],
    )
    .await;
    assert_eq!(gone.status, 404);
    let pull = send(url, "GET", "/v2/db/one/pull", Some(&admin), None, vec![]).await;
    assert_eq!(pull.status, 404);
    assert!(!dir.path().join("data/one").exists());
    // The OpenAPI document describes every route (schemathesis in the test command fuzzes
    // the server against it).
    let doc = send(url, "GET", "/openapi.json", None, None, vec![]).await;
    assert_eq!(doc.status, 200);
    let mut paths: Vec<&str> = doc.body["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v2/admin/databases",
            "/v2/admin/databases/{name}",
            "/v2/db/{db}/bootstrap",
            "/v2/db/{db}/conflicts",
            "/v2/db/{db}/events",
            "/v2/db/{db}/pull",
            "/v2/db/{db}/push",
        ]
    );
    assert!(doc.body["components"]["schemas"]["PushRequest"].is_object());
    // Health endpoints need no token.
    assert_eq!(
        send(url, "GET", "/healthz", None, None, vec![])
            .await
            .status,
        200
    );
    assert_eq!(
        send(url, "GET", "/readyz", None, None, vec![]).await.status,
        200
    );
}

#[test]
fn token_command_mints_a_token_the_server_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_entidb"))
        .args([
            "token",
            "--client",
            "c9",
            "--db",
            "app",
            "--scope",
            "read,write:notes",
            "--keys",
        ])
        .arg(format!("{KEY_ID}={SECRET}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = entidb_server::auth::Keys::new(&[key()])
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, "c9");
    assert_eq!(claims.db, "app");
    assert!(claims.can_write("notes") && !claims.can_write("tasks") && claims.can_read("tasks"));
    // A short key is refused with exit code 2.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_entidb"))
        .args(["token", "--client", "c9", "--keys", "k=short"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    // So is a lifetime whose end overflows (it wrapped to an expired token, exit 0).
    let forever = std::process::Command::new(env!("CARGO_BIN_EXE_entidb"))
        .args([
            "token",
            "--client",
            "c9",
            "--keys",
            &format!("{KEY_ID}={SECRET}"),
        ])
        .args(["--ttl-secs", "18446744073709551615"])
        .output()
        .unwrap();
    assert_eq!(forever.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&forever.stderr).contains("--ttl-secs"),
        "{}",
        String::from_utf8_lossy(&forever.stderr)
    );
}

/// The bearer scheme's name in any case is accepted; a second `Authorization` header is
/// refused (a proxy and the server could each read another one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_header_forms() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let good = token("app", "c1", &["read"], 3600);
    let other = token("app", "c2", &["read"], 3600);
    let http = reqwest::Client::new();
    let pull = format!("{}/v2/db/app/pull?since=0", server.url);
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let r = http
            .get(&pull)
            .header("authorization", format!("{scheme} {good}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    for (what, values) in [
        (
            "two tokens",
            vec![format!("Bearer {good}"), format!("Bearer {other}")],
        ),
        (
            "the same token twice",
            vec![format!("Bearer {good}"), format!("Bearer {good}")],
        ),
        ("another scheme", vec![format!("Basic {good}")]),
        ("no token after the scheme", vec!["Bearer".to_owned()]),
    ] {
        let mut req = http.get(&pull);
        for v in values {
            req = req.header("authorization", v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{what}: {body}");
    }
}

/// An admin token for one database administers that one only: the list shows it alone, and
/// creating or deleting another is 403 with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_for_one_database_administers_only_that_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    server.create_db("other").await;
    let url = &server.url;
    let app_admin = token("app", "ops", &["admin"], 3600);
    let json_ct = Some("application/json");
    let list = send(
        url,
        "GET",
        "/v2/admin/databases",
        Some(&app_admin),
        None,
        vec![],
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let names: Vec<&str> = list.body["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"]);
    let delete = send(
        url,
        "DELETE",
        "/v2/admin/databases/other",
        Some(&app_admin),
        None,
        vec![],
    )
    .await;
    expect_error(&delete, 403, "forbidden");
    let create = send(
        url,
        "POST",
        "/v2/admin/databases",
        Some(&app_admin),
        json_ct,
        serde_json::to_vec(&json!({"name": "third"})).unwrap(),
    )
    .await;
    expect_error(&create, 403, "forbidden");
    // Nothing changed: the operator's `*` token still sees both, and no third.
    let all = send(
        url,
        "GET",
        "/v2/admin/databases",
        Some(&Server::admin_token()),
        None,
        vec![],
    )
    .await;
    let mut names: Vec<&str> = all.body["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["app", "other"], "{}", all.body);
    // Its own database it may delete.
    let own = send(
        url,
        "DELETE",
        "/v2/admin/databases/app",
        Some(&app_admin),
        None,
        vec![],
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.body);
}

/// Any client, without a token, can send requests with made-up methods: each is answered
/// 405 `method_not_allowed` with an error body and the `Allow` header, and `/metrics` counts them all under one `method="other"` series instead of one series
/// per name (which would grow the metrics without end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    let http = reqwest::Client::new();
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("RAND{i}").as_bytes()).unwrap();
        let r = http
            .request(method, format!("{}/healthz", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "RAND{i}");
        assert_eq!(r.headers()["allow"], "GET,HEAD", "RAND{i}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "method_not_allowed", "{body}");
    }
    let m = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains("RAND"), "{m}");
    let other = m
        .lines()
        .find(|l| {
            l.starts_with("entidb_http_requests_total")
                && l.contains("method=\"other\"")
                && l.contains("route=\"/healthz\"")
        })
        .unwrap_or_else(|| panic!("no series for the made-up methods: {m}"));
    assert!(other.ends_with(" 20"), "{other}");
}

/// A push of many ops on one entity is answered with its document once: every result but
/// the last one for the entity leaves `doc` out (a client adopts only the last). Before, a
/// retry of a thousand ops on one large document was answered with a thousand copies (a
/// request of a few kilobytes could make the server build gigabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ops_on_one_entity_are_answered_with_its_document_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let url = &server.url;
    let t = token("app", "c1", &["write"], 3600);
    let big = "x".repeat(200_000);
    let id = "0190a5c2-0000-7000-8000-000000000001";
    let op =
        |op_id: u64, doc: Option<Value>| op_json(op_id, "notes", id, doc, None, (1, op_id), "c1");
    let (status, first) = push_json(
        url,
        "app",
        &t,
        "c1",
        vec![op(100, Some(json!({ "text": big })))],
    )
    .await;
    assert_eq!(status, 200, "{first}");
    // Op ids 1..=100, all at or below the highest applied: a retry, all `duplicate`.
    let (status, answer) = push_json(
        url,
        "app",
        &t,
        "c1",
        (1..=100).map(|i| op(i, None)).collect(),
    )
    .await;
    assert_eq!(status, 200);
    let text = answer.to_string();
    assert!(text.len() < 2 * big.len(), "{} bytes", text.len());
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    let version = &results[99]["state"]["version"];
    assert_eq!(results[99]["state"]["doc"]["text"], json!(big));
    for r in &results[..99] {
        assert_eq!(r["status"], "duplicate", "{r}");
        assert!(r["state"]["doc"].is_null(), "{r}");
        assert_eq!(&r["state"]["version"], version, "{r}");
    }
}

/// A document stored from CBOR may have no JSON form (here a map with an integer key and an
/// `undefined` value). A JSON reader gets 406 `not_acceptable` (it was a 500), a CBOR reader
/// the document, and a (JSON) event stream ends with that error instead of skipping the
/// page (it sent a bare `error` event and went on past the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_without_a_json_form_are_refused_to_json_readers_not_lost() {
    use entidb::cbor::Value as V;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let url = &server.url;
    let t = token("app", "c1", &["read", "write"], 3600);
    let events = || {
        reqwest::Client::new()
            .get(format!("{url}/v2/db/app/events?since=0"))
            .bearer_auth(&t)
            .send()
    };
    // A stream open before the document arrives.
    let mut stream = events().await.unwrap();
    assert_eq!(stream.status(), 200);
    let doc = V::Map(vec![(V::from(1), V::Undefined)]);
    let pushed = send(
        url,
        "POST",
        "/v2/db/app/push",
        Some(&t),
        Some("application/cbor"),
        cbor_push("c1", 1, tag24(&entidb::cbor::encode(&doc))),
    )
    .await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    let json = send(
        url,
        "GET",
        "/v2/db/app/pull?since=0",
        Some(&t),
        None,
        vec![],
    )
    .await;
    expect_error(&json, 406, "not_acceptable");
    let page: entidb_sync::wire::PullResponse =
        get_cbor(&format!("{url}/v2/db/app/pull?since=0"), &t).await;
    assert_eq!(page.changes.len(), 1);
    assert_eq!(
        page.changes[0].doc.as_ref().unwrap().to_value().unwrap(),
        doc
    );
    // The open stream ends with the error, and no `changes` event went out.
    let (seen, ended) = read_until_end(&mut stream, 20).await;
    assert!(ended, "the stream went on: {seen:?}");
    assert!(seen.contains("event: error"), "{seen}");
    assert!(seen.contains("not_acceptable"), "{seen}");
    assert!(!seen.contains("event: changes"), "{seen}");
    // Reconnecting from there is a plain 406 (an `EventSource` stops instead of trying
    // again forever).
    let again = events().await.unwrap();
    assert_eq!(again.status(), 406);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["code"], "not_acceptable", "{body}");
}

/// Field-merge metadata keeps fewer versions of a large document: eight 2.5 MiB versions
/// would pass the engine's document limit in the metadata, and every write of the entity
/// after the seventh was refused (413), leaving its client's outbox stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_merge_keeps_writing_a_large_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Some("[policies]\nnotes = \"field_merge\"\n"),
        &[],
    );
    server.create_db("app").await;
    let t = token("app", "c1", &["write"], 3600);
    let mut base = None;
    for n in 1..=10u64 {
        let big = format!("{n}").repeat(2_500_000);
        let doc = json!({"n": n, "data": big});
        let op = op_json(
            n,
            "notes",
            "0190a5c2-0000-7000-8000-000000000001",
            Some(doc),
            base,
            (n, 0),
            "c1",
        );
        let (status, answer) = push_json(&server.url, "app", &t, "c1", vec![op]).await;
        assert_eq!(status, 200, "write {n}");
        assert_eq!(
            answer["results"][0]["status"], "applied",
            "write {n}: {answer}"
        );
        base = answer["results"][0]["state"]["version"].as_u64();
    }
}

/// A chunked body (no length up front) over `max_body_bytes` is 413; one whose chunked
/// encoding breaks is 400 `malformed_body` (it was reported as too large too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_too_large_or_broken() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        None,
        &["--max-body-bytes", "4096"],
    );
    server.create_db("app").await;
    let t = token("app", "c1", &["write"], 3600);
    let send_raw = |chunks: String| {
        let (addr, t) = (server.addr(), t.clone());
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /v2/db/app/push HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {t}\r\n\
                 content-type: application/json\r\ntransfer-encoding: chunked\r\n\
                 connection: close\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(chunks.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
                    .await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let big = "x".repeat(5000);
    let over = send_raw(format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len())).await;
    assert!(over.starts_with("HTTP/1.1 413"), "{over}");
    assert!(over.contains("payload_too_large"), "{over}");
    let broken = send_raw("5\r\n{\"cli\r\nzz\r\n".to_owned()).await;
    assert!(broken.starts_with("HTTP/1.1 400"), "{broken}");
    assert!(broken.contains("malformed_body"), "{broken}");
}

/// A client whose clock is far ahead does not win every last-writer-wins decision: its
/// stamp counts as at most `max_clock_skew_ms` ahead of the server's clock, so a later write
/// of another client wins once that much time has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_far_in_the_future_counts_as_the_clock_skew() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Some("max_clock_skew_ms = 1000\n[policies]\nnotes = \"last_writer_wins\"\n"),
        &[],
    );
    server.create_db("app").await;
    let push = |client: &'static str, millis: u64| {
        let doc = Some(json!({ "by": client }));
        let op = op_json(
            1,
            "notes",
            "0190a5c2-0000-7000-8000-000000000001",
            doc,
            None,
            (millis, 0),
            client,
        );
        let t = token("app", client, &["write"], 3600);
        let url = server.url.clone();
        async move { push_json(&url, "app", &t, client, vec![op]).await.1 }
    };
    let ahead = push("a", u64::MAX - 1).await;
    assert_eq!(ahead["results"][0]["status"], "applied", "{ahead}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // b never saw a's write (base null): concurrent, decided by the stamps.
    let later = push("b", now).await;
    assert_eq!(later["results"][0]["status"], "applied", "{later}");
}

/// `entidb serve` ends with the documented exit codes when it cannot start: 3 when another
/// server has the data directory (two servers on one directory found each other's databases
/// locked and swept each other's deletes; the second one started, exit 0 later), 4 when the
/// address is taken (it was 1, which the operations guide reserves for `verify`), and 2 for a
/// bad configuration. Nothing in the running server's directory changes.
#[tokio::test]
async fn serve_refuses_a_data_directory_in_use_and_a_taken_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, None, &[]);
    server.create_db("app").await;
    let serve = |data: &std::path::Path, listen: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_entidb"))
            .args(["serve", "--listen", listen, "--keys"])
            .arg(format!("{KEY_ID}={SECRET}"))
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("ENTIDB_LOG", "warn")
            .output()
            .unwrap()
    };
    let second = serve(&data, "127.0.0.1:0", &[]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(err.contains("another entidb server"), "{err}");
    let taken = serve(&dir.path().join("other"), &server.addr(), &[]);
    let err = String::from_utf8_lossy(&taken.stderr);
    assert_eq!(taken.status.code(), Some(4), "{err}");
    assert!(err.contains("listening on"), "{err}");
    let bad = serve(
        &dir.path().join("other"),
        "127.0.0.1:0",
        &["--max-body-bytes", "0"],
    );
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // The first server still serves its database.
    let t = token("app", "c1", &["read"], 60);
    let pulled = get_json(&format!("{}/v2/db/app/pull?since=0", server.url), &t).await;
    assert!(pulled.get("changes").is_some(), "{pulled}");
}

/// A push's `instance` is 1-64 of `A-Z a-z 0-9 - _`, and a client id has no control
/// characters (a writer's identity joins them with one): 400, nothing stored.
#[tokio::test]
async fn a_bad_instance_or_client_id_is_refused() {
    let (_dir, server) = app_server(None).await;
    let op = op_json(
        1,
        "notes",
        "00000000-0000-0000-0000-000000000001",
        Some(json!({"t": 1})),
        None,
        (1, 0),
        "c1",
    );
    let push = |client: &str, body: Value| {
        let t = token("app", client, &["read", "write"], 60);
        let url = server.url.clone();
        async move {
            let bytes = serde_json::to_vec(&body).unwrap();
            send(
                &url,
                "POST",
                "/v2/db/app/push",
                Some(&t),
                Some("application/json"),
                bytes,
            )
            .await
        }
    };
    for instance in [json!(""), json!("a/b"), json!("x".repeat(65)), json!(7)] {
        let body = json!({"client_id": "c1", "instance": instance, "ops": [op.clone()]});
        let call = push("c1", body).await;
        let code = if instance.is_string() {
            "bad_request"
        } else {
            "malformed_body"
        };
        expect_error(&call, 400, code);
    }
    let odd = "c\u{1f}1";
    let call = push(odd, json!({"client_id": odd, "ops": [op.clone()]})).await;
    expect_error(&call, 400, "bad_request");
    // Nothing was stored; a valid instance is taken.
    let t = token("app", "c1", &["read", "write"], 60);
    let pulled = get_json(&format!("{}/v2/db/app/pull?since=0", server.url), &t).await;
    assert_eq!(pulled["changes"], json!([]), "{pulled}");
    let call = push(
        "c1",
        json!({"client_id": "c1", "instance": "Ab-9_", "ops": [op]}),
    )
    .await;
    assert_eq!(call.status, 200, "{}", call.body);
    assert_eq!(
        call.body["results"][0]["status"], "applied",
        "{}",
        call.body
    );
}

/// A document whose JSON rendering would change it silently is refused to JSON readers
/// too: serde_json wrote an integer key as a string and a NaN as null, with 200 (the
/// protocol promises 406 for a key that is not text). CBOR readers get it as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_readers_never_get_a_document_changed() {
    use entidb::cbor::Value as V;
    let (_dir, server) = app_server(None).await;
    let url = &server.url;
    let t = token("app", "c1", &["read", "write"], 3600);
    let docs = [
        V::Map(vec![(V::from(1), V::from("x"))]),
        V::map([("f", V::Float(f64::NAN))]),
        V::map([("deep", V::array([V::Map(vec![(V::Bool(true), V::Null)])]))]),
    ];
    for (i, doc) in docs.iter().enumerate() {
        let op = i as u64 + 1;
        let pushed = send(
            url,
            "POST",
            "/v2/db/app/push",
            Some(&t),
            Some("application/cbor"),
            cbor_push("c1", op, tag24(&entidb::cbor::encode(doc))),
        )
        .await;
        assert_eq!(pushed.status, 200, "{}", pushed.body);
        let since = format!("/v2/db/app/pull?since={}", op - 1);
        let json = send(url, "GET", &since, Some(&t), None, vec![]).await;
        expect_error(&json, 406, "not_acceptable");
        let page: entidb_sync::wire::PullResponse = get_cbor(&format!("{url}{since}"), &t).await;
        let got = page.changes[0].doc.as_ref().unwrap().to_value().unwrap();
        assert_eq!(format!("{got:?}"), format!("{doc:?}"));
    }
}
