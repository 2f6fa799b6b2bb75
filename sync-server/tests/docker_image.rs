//! The container image's contract with the binary, checked without a Docker engine (there is
//! none on the development machine): `docker/Dockerfile`'s final stage is read, and the
//! `entidb` binary is run with exactly its entrypoint, command and environment, plus the
//! empty `ENTIDB_KEYS` that `docker/compose.yaml` passes when no keys are set. Only the data
//! directory (a temporary one instead of the volume) and the port (any free one) differ.
//! What the image build itself does (the Rust build stage, the Debian packages) is not
//! executed here; `scripts/test.sh` lints the Dockerfile with hadolint.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// The instructions of the Dockerfile's last stage that the container's process sees.
#[derive(Debug, Default)]
struct Image {
    env: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    expose: Vec<u16>,
    volumes: Vec<String>,
    user: String,
    /// Destinations of `COPY --from=...` (the binary's place).
    copied_to: Vec<String>,
}

/// Joins continuation lines and drops comments: one string per instruction.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn json_array(s: &str) -> Vec<String> {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not an exec-form array: {s}: {e}"))
}

fn final_stage(text: &str) -> Image {
    let all = instructions(text);
    let last_from = all
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM instruction");
    let mut image = Image::default();
    for i in &all[last_from + 1..] {
        let (word, rest) = i.split_once(' ').unwrap_or((i, ""));
        match word {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV in key=value form: {pair}"));
                    image.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "ENTRYPOINT" => image.entrypoint = json_array(rest),
            "CMD" => image.cmd = json_array(rest),
            "EXPOSE" => {
                image.expose = rest
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect()
            }
            "VOLUME" => image.volumes = json_array(rest),
            "USER" => image.user = rest.trim().to_owned(),
            "COPY" if rest.starts_with("--from=") => {
                image
                    .copied_to
                    .push(rest.split_whitespace().last().unwrap().to_owned());
            }
            _ => {}
        }
    }
    image
}

/// A server process, killed if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stdout lines of `child` up to and including the first that `last` accepts, read on a
/// thread (which then keeps draining the pipe), or a panic after 60 s.
fn lines_until(child: &mut std::process::Child, last: fn(&str) -> bool) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut out = BufReader::new(out).lines();
        for line in out.by_ref() {
            let line = line.unwrap();
            let done = last(&line);
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = tx.send(lines);
        for _ in out {}
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server printed its lines within 60 s")
}

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_parser_reads_continuations_and_the_last_stage_only() {
    let image = final_stage(
        "FROM a AS build\nENV X=1\nCMD [\"no\"]\n# c\nFROM b\nENV A=1 \\\n    B=two\n\
         COPY --from=build /x /usr/bin/x\nUSER 7:7\nENTRYPOINT [\"x\"]\nCMD [\"serve\", \"-v\"]\n\
         EXPOSE 80 443\nVOLUME [\"/d\"]\n",
    );
    assert_eq!(image.env.len(), 2);
    assert_eq!(image.env["B"], "two");
    assert_eq!(image.entrypoint, ["x"]);
    assert_eq!(image.cmd, ["serve", "-v"]);
    assert_eq!(image.expose, [80, 443]);
    assert_eq!(image.volumes, ["/d"]);
    assert_eq!(image.user, "7:7");
    assert_eq!(image.copied_to, ["/usr/bin/x"]);
}

/// Runs the binary as the container would and uses what it prints: the development token
/// and the curl example's address, from outside; `entidb token` as `docker exec` would run
/// it; SIGTERM as `docker stop` sends it.
#[tokio::test]
async fn the_image_command_serves_prints_a_working_token_and_stops_cleanly() {
    let image = final_stage(&repo_file("docker/Dockerfile"));
    let compose = repo_file("docker/compose.yaml");

    // The entrypoint is this binary, on the PATH where the build stage put it.
    assert_eq!(image.entrypoint, ["entidb"], "entrypoint");
    assert!(
        image.copied_to.iter().any(|d| d == "/usr/local/bin/entidb"),
        "the binary is copied to /usr/local/bin: {:?}",
        image.copied_to
    );
    assert_eq!(image.cmd, ["serve"], "command");
    // Not root; the data directory is the volume; the port listened on is the one exposed.
    assert!(
        !image.user.is_empty() && !image.user.starts_with("0") && image.user != "root",
        "runs as a non-root user: {:?}",
        image.user
    );
    let data_dir = image.env.get("ENTIDB_DATA_DIR").expect("ENTIDB_DATA_DIR");
    assert_eq!(
        image.volumes,
        std::slice::from_ref(data_dir),
        "the data directory is the volume"
    );
    let listen = image.env.get("ENTIDB_LISTEN").expect("ENTIDB_LISTEN");
    let (host, port) = listen.rsplit_once(':').unwrap();
    assert_eq!(
        host, "0.0.0.0",
        "listens on every interface of the container"
    );
    assert_eq!(image.expose, [port.parse::<u16>().unwrap()], "EXPOSE");
    assert!(
        compose.contains(&format!("\"{port}:{port}\"")),
        "compose publishes the port"
    );
    assert!(
        compose.contains(&format!("entidb-data:{data_dir}")),
        "compose mounts the volume on the data directory"
    );
    assert!(
        compose.contains("ENTIDB_KEYS: ${ENTIDB_KEYS:-}"),
        "compose passes ENTIDB_KEYS, empty when unset"
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = |cmd: &mut Command| {
        for (k, v) in &image.env {
            cmd.env(k, v);
        }
        cmd.env("ENTIDB_DATA_DIR", &data)
            .env("ENTIDB_LISTEN", format!("{host}:0"))
            // What compose passes when no keys are set: development mode.
            .env("ENTIDB_KEYS", "");
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_entidb"));
    env(&mut cmd);
    cmd.args(&image.entrypoint[1..])
        .args(&image.cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Running(cmd.spawn().unwrap());
    let printed = lines_until(&mut child.0, |l| l.contains("pull?since=0"));
    let printed = printed.join("\n");
    assert!(
        printed.contains("listening on http://0.0.0.0:"),
        "binds every interface:\n{printed}"
    );
    let token = printed
        .lines()
        .skip_while(|l| !l.starts_with("dev token"))
        .nth(1)
        .unwrap_or_else(|| panic!("a development token:\n{printed}"))
        .trim()
        .to_owned();
    // The example names an address a client can reach, not 0.0.0.0.
    let url = printed
        .split_whitespace()
        .find_map(|w| w.trim_matches('\'').strip_suffix("/v2/db/app/pull?since=0"))
        .unwrap_or_else(|| panic!("a pull example:\n{printed}"))
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "example address {url}"
    );

    // Logs go to stderr, read after the process exits.
    let err = child.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });

    let http = reqwest::Client::new();
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let pull = |token: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(format!("{url}/v2/db/app/pull?since=0"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(pull(token).await.status(), 200, "the printed token works");

    // `docker exec <container> entidb token ...` runs with the image's environment and
    // signs with the development key in the data volume.
    let mut mint = Command::new(env!("CARGO_BIN_EXE_entidb"));
    env(&mut mint);
    let minted = mint
        .args([
            "token", "--client", "app-1", "--db", "app", "--scope", "read",
        ])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let minted = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert_eq!(
        pull(minted).await.status(),
        200,
        "a token minted in the container works"
    );

    // `docker stop`: SIGTERM, a clean exit.
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.0.wait().unwrap().success(), "exits 0 on SIGTERM");
    // Logs are JSON lines (ENTIDB_LOG_FORMAT=json), among them the shutdown's.
    let logs = logs.join().unwrap();
    let mut messages = Vec::new();
    for line in &logs {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a JSON log line: {line}: {e}"));
        assert!(parsed.get("level").is_some(), "{line}");
        messages.push(
            parsed["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        messages.iter().any(|m| m == "databases closed"),
        "the shutdown closed the databases: {logs:?}"
    );
}

/// The empty `ENTIDB_KEYS` that compose passes when no keys are set does not replace the keys
/// of a configuration file (which would put the server in development mode, accepting
/// tokens of a key generated into its volume instead of the configured ones).
#[tokio::test]
async fn an_empty_keys_variable_keeps_the_configured_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    let secret = "configured-secret-0123456789abcdef0123";
    std::fs::write(
        &config,
        format!("[[keys]]\nid = \"k1\"\nsecret = \"{secret}\"\n"),
    )
    .unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_entidb"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("ENTIDB_KEYS", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let printed = lines_until(&mut child.0, |l| l.starts_with("data directory:"));
    let url = printed[0]
        .strip_prefix("entidb serve: listening on ")
        .unwrap()
        .to_owned();
    let key = entidb_server::config::KeyConfig {
        id: "k1".into(),
        secret: secret.into(),
    };
    let admin = entidb_server::mint_token(&key, "*", "ops", &["admin".into()], 60).unwrap();
    let http = reqwest::Client::new();
    let list = |token: String| {
        http.get(format!("{url}/v2/admin/databases"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        list(admin).await.unwrap().status(),
        200,
        "the configured key signs: {printed:?}"
    );
    // `entidb token` in the same environment reads the keys of the same file (as `docker
    // exec` in a container started with ENTIDB_CONFIG would), not a development key.
    let minted = Command::new(env!("CARGO_BIN_EXE_entidb"))
        .args(["token", "--client", "ops", "--db", "*", "--scope", "admin"])
        .env("ENTIDB_KEYS", "")
        .env("ENTIDB_CONFIG", &config)
        .env("ENTIDB_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let minted = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert_eq!(
        list(minted).await.unwrap().status(),
        200,
        "the minted token works"
    );
    assert!(
        !dir.path()
            .join("data")
            .join(entidb_server::DEV_KEY_FILE)
            .exists(),
        "no development key was made"
    );
}
