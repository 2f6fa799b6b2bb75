//! The protocol's test vectors (`docs/sync-vectors/*.json`) replayed against the real server:
//! each request is sent in CBOR, in file order, to one fresh server (its CBOR form, made from
//! the vector's JSON `request` through the wire types, must equal `request_cbor_hex`); the
//! answer must equal the vector's CBOR bytes, and its JSON form (through the wire types) the
//! vector's `response`.
//!
//! `ENTIDB_BLESS_VECTORS=1` rewrites the files' responses from the server instead (review the
//! diff before committing it).

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::*;

fn vector_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/sync-vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "vectors missing in {}", dir.display());
    files
}

/// JSON -> wire type -> CBOR (requests).
fn request_cbor(kind: &str, json: &Value) -> Vec<u8> {
    use entidb_sync::wire::*;
    fn enc<T: serde::de::DeserializeOwned + serde::Serialize>(json: &Value) -> Vec<u8> {
        let typed: T = serde_json::from_value(json.clone()).unwrap();
        Format::Cbor.encode(&typed).unwrap()
    }
    match kind {
        "PushRequest" => enc::<PushRequest>(json),
        "CreateDatabase" => enc::<CreateDatabase>(json),
        other => panic!("unknown request type {other}"),
    }
}

/// CBOR -> wire type -> JSON (responses).
fn response_json(kind: &str, cbor: &[u8]) -> Value {
    use entidb_sync::wire::*;
    fn dec<T: entidb_sync::wire::Message + serde::Serialize>(cbor: &[u8]) -> Value {
        let typed: T = Format::Cbor.decode(cbor).unwrap();
        serde_json::to_value(&typed).unwrap()
    }
    match kind {
        "PushResponse" => dec::<PushResponse>(cbor),
        "PullResponse" => dec::<PullResponse>(cbor),
        "BootstrapResponse" => dec::<BootstrapResponse>(cbor),
        "ErrorBody" => dec::<ErrorBody>(cbor),
        "DatabaseList" => dec::<DatabaseList>(cbor),
        other => panic!("unknown response type {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_every_vector_as_documented() {
    let bless = std::env::var_os("ENTIDB_BLESS_VECTORS").is_some();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let http = reqwest::Client::new();
    for file in vector_files() {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let path = v["path"].as_str().unwrap().to_owned();
        let url = format!("{}{path}", server.url);
        let mut req = match v["method"].as_str().unwrap() {
            "GET" => http.get(&url),
            _ => http.post(&url),
        };
        if let Some(auth) = v["token"].as_object() {
            let scope: Vec<&str> = auth["scope"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            req = req.bearer_auth(token(
                auth["db"].as_str().unwrap(),
                auth["sub"].as_str().unwrap(),
                &scope,
                3600,
            ));
        }
        req = req.header("accept", "application/cbor");
        if let Some(raw) = v["request_raw_hex"].as_str() {
            req = req
                .header("content-type", "application/cbor")
                .body(hex::decode(raw).unwrap());
        } else if !v["request"].is_null() {
            let body = request_cbor(v["request_type"].as_str().unwrap(), &v["request"]);
            if bless {
                v["request_cbor_hex"] = hex::encode(&body).into();
            } else {
                assert_eq!(
                    hex::encode(&body),
                    v["request_cbor_hex"].as_str().unwrap(),
                    "{name}: the request's CBOR bytes differ"
                );
            }
            req = req.header("content-type", "application/cbor").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap().to_vec();
        let got = response_json(v["response_type"].as_str().unwrap(), &bytes);
        if bless {
            v["status"] = status.into();
            v["response"] = got;
            v["response_cbor_hex"] = hex::encode(&bytes).into();
            std::fs::write(&file, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
            continue;
        }
        assert_eq!(status, v["status"].as_u64().unwrap() as u16, "{name}");
        assert_eq!(got, v["response"], "{name}");
        assert_eq!(
            hex::encode(&bytes),
            v["response_cbor_hex"].as_str().unwrap(),
            "{name}: CBOR bytes differ"
        );
    }
}
