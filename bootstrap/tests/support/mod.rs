//! What the registry's process tests share: the `agentmesh-bootstrap` binary
//! as a real process, a small HTTP client, and the `agentmesh` CLI.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use agentmesh_bootstrap::loopback::{OidcProvider, CLIENT_ID, CLIENT_SECRET};
use agentmesh_node::{
    registry::{Operation, SignedRequest},
    Identity,
};

/// A node configuration for tests: loopback, and a cheap key derivation.
pub fn fast_config() -> agentmesh_node::Config {
    let mut c = agentmesh_node::Config::local();
    c.kdf = agentmesh_node::crypto::keystore::KdfParams::throwaway();
    c
}

/// An in-process node named `name` (its data directory and passphrase)
/// under `dir`, joining through `boot`.
pub async fn node(
    dir: &Path,
    name: &str,
    config: agentmesh_node::Config,
    boot: &str,
) -> agentmesh_node::Node {
    agentmesh_node::Node::builder(config)
        .data_dir(dir.join(name))
        .passphrase(agentmesh_node::Passphrase::new(name))
        .bootstrap(boot.parse().unwrap())
        .spawn()
        .await
        .expect("node starts")
}

/// Generous: the machine is shared by parallel builds.
pub const WAIT: Duration = Duration::from_secs(90);

pub fn now_ms() -> u64 {
    agentmesh_dht::now_ms()
}

/// A running `agentmesh-bootstrap` and what its `ready` line said.
pub struct Server {
    pub child: Child,
    /// Registry base URL.
    pub url: String,
    /// First libp2p address.
    pub addr: String,
    /// Registry root key (AMID form).
    pub root: String,
    /// The operator's page URL, when it serves one.
    pub page: Option<String>,
}

/// Starts the binary on `<dir>/bootstrap` with its HTTP API on a free
/// loopback port.
pub async fn start_registry(dir: &Path, pass: &str) -> Server {
    start(&dir.join("bootstrap"), pass, &["--http", "127.0.0.1:0"]).await
}

impl Server {
    /// The bootstrap node's peer id (the end of its first address).
    pub fn peer_id(&self) -> libp2p::PeerId {
        self.addr.rsplit("/p2p/").next().unwrap().parse().unwrap()
    }
}

/// Starts the binary on `dir` with `--json` and `args`; waits for its
/// `ready` line.
pub async fn start(dir: &Path, pass: &str, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentmesh-bootstrap"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .args(args)
        .env("AGENTMESH_PASSPHRASE", pass)
        .env_remove("AGENTMESH_PASSPHRASE_FILE")
        .env_remove("AGENTMESH_BOOTSTRAP_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("ready line");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["event"] == "ready" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("ready in time");
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        child,
        url: ready["registry"].as_str().unwrap().to_owned(),
        addr: ready["addrs"][0].as_str().unwrap().to_owned(),
        root: ready["registry_root"].as_str().unwrap().to_owned(),
        page: ready["page"].as_str().map(str::to_owned),
    }
}

/// A JSON client of one base URL (or of full URLs with [`Http::get_url`]).
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_owned(),
        }
    }

    /// Status, `Location` header and JSON body (or null) of a request to a
    /// full URL; `None` when the connection fails.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Option<(u16, Option<String>, Value)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, self.client.request(req))
            .await
            .expect("answer in time")
            .ok()?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            location,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        self.request(method, &url, body)
            .await
            .map(|(s, _, v)| (s, v))
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        self.try_call(method, path, body).await.expect("request")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// GET of a full URL: status, `Location` and body.
    pub async fn get_url(&self, url: &str) -> (u16, Option<String>, Value) {
        self.request("GET", url, None).await.expect("request")
    }

    pub async fn post(&self, path: &str, v: &impl serde::Serialize) -> (u16, Value) {
        self.call("POST", path, Some(serde_json::to_vec(v).unwrap()))
            .await
    }

    pub async fn signed(&self, path: &str, who: &Identity, op: Operation) -> (u16, Value) {
        let req = SignedRequest::sign(who, op, now_ms()).unwrap();
        self.post(path, &req).await
    }
}

/// The `agentmesh` binary, next to this package's binary, brought up to
/// date once per test run. The whole workspace is named so that features
/// unify as in `cargo build --workspace --all-targets`: after that build
/// (or `cargo test --workspace`) this is a no-op, not a second build.
pub fn agentmesh_exe() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--workspace", "--all-targets"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building agentmesh");
    });
    PathBuf::from(env!("CARGO_BIN_EXE_agentmesh-bootstrap")).with_file_name("agentmesh")
}

/// Runs `agentmesh --data-dir <home> <args>` against `registry`; returns
/// success and stdout + stderr.
pub async fn cli(home: &Path, pass: &str, registry: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(agentmesh_exe())
            .arg("--data-dir")
            .arg(home)
            .args(args)
            .env("AGENTMESH_PASSPHRASE", pass)
            .env("AGENTMESH_REGISTRY", registry)
            .env_remove("AGENTMESH_PASSPHRASE_FILE")
            .output(),
    )
    .await
    .expect("cli in time")
    .expect("cli runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Writes a bootstrap config naming the loopback OIDC provider, plus
/// `extra` TOML; returns its path.
pub fn oauth_config(dir: &Path, provider: &OidcProvider, extra: &str) -> String {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    let path = dir.join("bootstrap.toml");
    std::fs::write(
        &path,
        format!(
            "[oauth]\nprovider = \"loopback\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_file = \"{}\"\nauthorize_url = \"{}\"\ntoken_url = \"{}\"\n\
             userinfo_url = \"{}\"\n{extra}",
            secret.display(),
            provider.authorize_url(),
            provider.token_url(),
            provider.userinfo_url(),
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `agentmesh --data-dir <home> --json <args>` as a running process, with
/// its stdout lines as JSON values.
pub struct Running {
    pub child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    pub fn spawn(home: &Path, pass: &str, registry: &str, args: &[&str]) -> Self {
        let mut child = Command::new(agentmesh_exe())
            .arg("--data-dir")
            .arg(home)
            .arg("--json")
            .args(args)
            .env("AGENTMESH_PASSPHRASE", pass)
            .env("AGENTMESH_REGISTRY", registry)
            .env_remove("AGENTMESH_PASSPHRASE_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("agentmesh starts");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next output line for which `pred` holds.
    pub async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("output line");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if pred(&v) {
                        return v;
                    }
                }
            }
        })
        .await
        .expect("output in time")
    }

    /// Waits for the process to exit; whether it succeeded.
    pub async fn exit(mut self) -> bool {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait")
            .success()
    }
}

/// The first JSON line of a command's output.
pub fn json_of(text: &str) -> Value {
    text.lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON in {text}"))
}

/// A GET of `path` on `addr` with `host` as the `Host` header: status and
/// body.
pub async fn raw_get(addr: &str, host: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes())
            .await
            .unwrap();
        let mut resp = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut resp)
            .await
            .unwrap();
        String::from_utf8(resp).unwrap()
    };
    let resp = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answer in time");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, body.to_owned())
}
