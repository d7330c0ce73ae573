//! The CLI's registry commands: `register`, `search`, `did` and
//! `reputation verify`, over the registry's HTTP API (`/v1`). `register`
//! and `search` go through the running node's local API instead when a
//! node runs for the data directory (see [`running_node`]).

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};

use agentmesh_node::{
    api::{ApiError, ApiInfo, ErrorCode},
    control::{Client as NodeClient, ControlError, Method},
    identity::rotation::SignedRotation,
    registry::{
        Feedback, Operation, ReceiptBody, Registration, RequestBody, SessionReceipt, SignedRequest,
    },
    trust::reputation::{self, Evidence, Rating, SessionOutcome},
    Amid, Identity, Tier,
};

/// Largest answer read from a registry.
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the registry is.
#[derive(Args, Debug, Clone)]
pub(crate) struct RegistryArg {
    /// Registry base URL (without `/v1`), or the registry node's multiaddr
    /// (ending in `/p2p/<peer id>`) to use `/agentmesh/registry/1`.
    #[arg(
        long,
        env = "AGENTMESH_REGISTRY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) registry: String,
}

/// `agentmesh reputation ...`
#[derive(Subcommand, Debug)]
pub(crate) enum ReputationCmd {
    /// Recompute an agent's score from the registry's published evidence
    /// (receipts signed by both sides, signed ratings) and compare it with
    /// the score the registry reports.
    Verify {
        /// The agent.
        amid: Amid,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Rate the other agent of a session that ended with a receipt both
    /// sides signed (`agentmesh receipts` lists them). Over HTTP only: the
    /// anti-gaming rules need the rater's network address.
    Rate {
        /// The agent rated.
        amid: Amid,
        /// The session (hex, as `agentmesh receipts` prints it).
        #[arg(long)]
        session: String,
        /// The rating, 0 to 1.
        #[arg(long)]
        score: f64,
        #[command(flatten)]
        registry: RegistryArg,
    },
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A small JSON-over-HTTP(S) client, or, when the registry is given as a
/// multiaddr, a `/agentmesh/registry/1` client answering the same JSON.
pub(crate) struct RegistryClient {
    base: String,
    client: Client<Https, Full<Bytes>>,
    p2p: Option<crate::registry_p2p::P2pRegistry>,
}

impl RegistryClient {
    pub(crate) fn new(base: &str) -> Result<Self> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let p2p = if base.starts_with('/') {
            let addr: agentmesh_node::Multiaddr = base.parse().context("registry multiaddr")?;
            Some(crate::registry_p2p::P2pRegistry::connect(&addr)?)
        } else {
            None
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            p2p,
        })
    }

    /// Status and body of a request to `url` (redirects are not followed).
    pub(crate) async fn raw(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::StatusCode, Option<String>, Bytes)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .with_context(|| format!("{url}: timed out"))?
            .with_context(|| format!("{url}: request failed"))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: reading the answer: {e}"))?
            .to_bytes();
        Ok((status, location, bytes))
    }

    /// Status and JSON body of a request to a path of the registry.
    pub(crate) async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::StatusCode, Value)> {
        if let Some(p2p) = &self.p2p {
            return match (method, body) {
                ("GET", _) => p2p.get(path).await,
                (_, Some(b)) => p2p.signed(serde_json::from_slice(&b)?).await,
                _ => bail!("{method} {path} is served over HTTP only"),
            };
        }
        let url = format!("{}{path}", self.base);
        let (status, _, bytes) = self.raw(method, &url, body).await?;
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{url}: answer is not JSON ({status})"))?;
        Ok((status, v))
    }

    async fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        let (status, v) = self.try_call(method, path, body).await?;
        if !status.is_success() {
            bail!(
                "{status}: {} ({})",
                v["error"]["message"].as_str().unwrap_or("error"),
                v["error"]["code"].as_str().unwrap_or("?")
            );
        }
        Ok(v)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None).await
    }

    pub(crate) async fn signed(&self, path: &str, who: &Identity, op: Operation) -> Result<Value> {
        let req = SignedRequest::sign(who, op, agentmesh_dht::now_ms())?;
        self.call("POST", path, Some(serde_json::to_vec(&req)?))
            .await
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `agentmesh register`. An agent that rotated its key (`rotations`, its
/// history) takes its old registration along.
pub(crate) async fn register(
    identity: &Identity,
    rotations: &[SignedRotation],
    registry: &RegistryArg,
    name: &str,
    capabilities: &[String],
    relays: &[String],
    json_out: bool,
) -> Result<()> {
    let client = RegistryClient::new(&registry.registry)?;
    let mut reg = Registration::new(name, capabilities.to_vec());
    reg.relays = relays.to_vec();
    let mut v = client
        .signed("/v1/registry/register", identity, Operation::Register(reg))
        .await?;
    if !rotations.is_empty() {
        let op = Operation::Rotate {
            rotations: rotations
                .iter()
                .map(|r| hex::encode(r.to_bytes()))
                .collect(),
        };
        let req = SignedRequest::sign(identity, op, agentmesh_dht::now_ms())?;
        let (status, moved) = client
            .try_call(
                "POST",
                "/v1/registry/rotate",
                Some(serde_json::to_vec(&req)?),
            )
            .await?;
        if status.is_success() {
            v["rotated"] = moved;
        } else if moved["error"]["code"] != "unknown_agent" {
            bail!(
                "registered, but the old registration did not move: {status}: {} ({})",
                moved["error"]["message"].as_str().unwrap_or("error"),
                moved["error"]["code"].as_str().unwrap_or("?")
            );
        }
    }
    print_registered(&v, &identity.amid(), json_out);
    Ok(())
}

/// Prints the registry's answer to a registration of `amid`.
fn print_registered(v: &Value, amid: &Amid, json_out: bool) {
    if json_out {
        println!("{v}");
    } else {
        println!(
            "{} {amid} (tier {})",
            if v["created"] == true {
                "registered"
            } else {
                "updated"
            },
            v["tier"].as_str().unwrap_or("?")
        );
        let moved = &v["rotated"];
        if moved["moved"] == true {
            println!(
                "moved the registration of {} here (tier {}; the old key is revoked)",
                moved["from"].as_str().unwrap_or("?"),
                moved["tier"].as_str().unwrap_or("?")
            );
        }
    }
}

/// The local API of the node running for data directory `dir` (found as
/// the other commands find it: `api.json` and the Unix socket there);
/// `None` when no node runs for it.
pub(crate) async fn running_node(dir: &Path) -> Result<Option<(NodeClient, ApiInfo)>> {
    match NodeClient::connect(dir).await {
        Ok(client) => {
            let info = ApiInfo::read(dir).context("the node's api.json")?;
            Ok(Some((client, info)))
        }
        Err(ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The answer of a local API registry route, or its error (with a hint
/// when the node has no registry).
async fn node_call(
    node: &mut NodeClient,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    match node.call(method, path, body).await? {
        Ok(v) => Ok(v),
        Err(ApiError { code, message, .. }) if code == ErrorCode::NotFound => bail!(
            "the running node: {message} ({}); or pass --direct to talk to --registry yourself",
            code.as_str()
        ),
        Err(ApiError { code, message, .. }) => {
            bail!("the running node: {message} ({})", code.as_str())
        }
    }
}

/// `agentmesh register` through the running node's local API
/// (`POST /v1/registry/register`): the node signs and sends the
/// registration to its registry, with its relays, and, when
/// `capabilities` is empty, the capabilities it runs with.
pub(crate) async fn register_via_node(
    node: &mut NodeClient,
    info: &ApiInfo,
    name: Option<&str>,
    capabilities: &[String],
    json_out: bool,
) -> Result<()> {
    let amid: Amid = info.amid.parse().context("the node's AMID in api.json")?;
    let name = name.map_or_else(|| format!("agent-{}", amid.short()), str::to_owned);
    let mut body = json!({ "name": name });
    if !capabilities.is_empty() {
        body["capabilities"] = json!(capabilities);
    }
    let v = node_call(node, Method::POST, "/v1/registry/register", Some(&body)).await?;
    print_registered(&v["registration"], &amid, json_out);
    Ok(())
}

/// Sends one signed operation to `path` and prints the registry's answer
/// (JSON with `--json`, else a line per field).
pub(crate) async fn signed_op(
    identity: &Identity,
    registry: &RegistryArg,
    path: &str,
    op: Operation,
    json_out: bool,
) -> Result<()> {
    let client = RegistryClient::new(&registry.registry)?;
    let v = client.signed(path, identity, op).await?;
    if json_out {
        println!("{v}");
    } else if let Some(fields) = v.as_object() {
        for (k, value) in fields {
            match value {
                Value::String(s) => println!("{k} {s}"),
                other => println!("{k} {other}"),
            }
        }
    } else {
        println!("{v}");
    }
    Ok(())
}

/// `agentmesh search`.
pub(crate) async fn search(
    registry: &RegistryArg,
    capability: &str,
    tier_min: Option<&str>,
    reputation_min: Option<f64>,
    limit: Option<usize>,
    json_out: bool,
) -> Result<()> {
    let client = RegistryClient::new(&registry.registry)?;
    let path = search_path(capability, tier_min, reputation_min, limit);
    let v = client.get(&path).await?;
    print_search(&v, capability, json_out);
    Ok(())
}

/// `agentmesh search` through the running node's local API
/// (`GET /v1/registry/search`, the same query), asking the node's
/// registry.
pub(crate) async fn search_via_node(
    node: &mut NodeClient,
    capability: &str,
    tier_min: Option<&str>,
    reputation_min: Option<f64>,
    limit: Option<usize>,
    json_out: bool,
) -> Result<()> {
    let path = search_path(capability, tier_min, reputation_min, limit);
    let v = node_call(node, Method::GET, &path, None).await?;
    // `{"results": <the registry's answer>}`.
    print_search(&v["results"], capability, json_out);
    Ok(())
}

/// The path of a search, on the registry's API and on the local API alike.
fn search_path(
    capability: &str,
    tier_min: Option<&str>,
    reputation_min: Option<f64>,
    limit: Option<usize>,
) -> String {
    let mut path = format!("/v1/registry/search?capability={}", enc(capability));
    if let Some(t) = tier_min {
        path.push_str(&format!("&tier_min={}", enc(t)));
    }
    if let Some(r) = reputation_min {
        path.push_str(&format!("&reputation_min={r}"));
    }
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    path
}

/// Prints a registry's search answer (`{count, results}`).
fn print_search(v: &Value, capability: &str, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    let results = v["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        println!("no agent offers {capability}");
    }
    for r in results {
        println!(
            "{}  {:<12} rep {:.3}  {:<8} {}  [{}]",
            r["amid"].as_str().unwrap_or("?"),
            r["tier"].as_str().unwrap_or("?"),
            r["reputation"].as_f64().unwrap_or(0.0),
            r["presence"].as_str().unwrap_or("?"),
            r["display_name"].as_str().unwrap_or(""),
            r["capabilities"]
                .as_array()
                .map(|c| c
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
        );
    }
}

/// `agentmesh did`.
pub(crate) async fn did(registry: &RegistryArg, amid: &Amid) -> Result<()> {
    let client = RegistryClient::new(&registry.registry)?;
    let v = client.get(&format!("/v1/registry/did/{amid}")).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The outcome of recomputing a score.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) recomputed: f64,
    pub(crate) reported: f64,
    pub(crate) receipts: usize,
    pub(crate) ratings: usize,
}

/// Checks the published evidence and recomputes the score from it.
pub(crate) fn recompute(amid: &Amid, ev: &Value) -> Result<Verified> {
    let tier: Tier = serde_json::from_value(ev["tier"].clone()).context("tier")?;
    let registered_ms = ev["registered_ms"].as_u64().context("registered_ms")?;
    let at = ev["computed_ms"].as_u64().context("computed_ms")?;
    let mut outcomes = Vec::new();
    let mut sessions: HashSet<(String, Amid)> = HashSet::new();
    for r in ev["receipts"].as_array().context("receipts")? {
        let receipt: SessionReceipt = serde_json::from_value(r.clone())?;
        let body: ReceiptBody = receipt
            .verify()
            .context("a receipt's signatures do not verify")?;
        let other = if body.initiator == *amid {
            body.responder
        } else if body.responder == *amid {
            body.initiator
        } else {
            bail!("a receipt does not name {amid}");
        };
        sessions.insert((body.session_id.clone(), other));
        outcomes.push(SessionOutcome {
            ended_ms: body.ended_ms,
            completed: body.completed,
        });
    }
    let mut ratings = Vec::new();
    for f in ev["ratings"].as_array().context("ratings")? {
        let req: SignedRequest = serde_json::from_value(f["request"].clone())?;
        // The timestamp window is the registry's business at filing time;
        // here only the signature and content count.
        let body: RequestBody = serde_json::from_str(&req.body)?;
        let sig_ok = {
            let sig = hex::decode(&req.signature).unwrap_or_default();
            req.signer.verify(
                agentmesh_node::registry::DOMAIN_SEP_REQUEST,
                req.body.as_bytes(),
                &sig,
            )
        };
        if !sig_ok {
            bail!("a rating by {} is not signed by it", req.signer);
        }
        let Operation::Feedback(fb) = body.op else {
            bail!("a rating is not a feedback request");
        };
        if fb.target != *amid || f["score"].as_f64() != Some(fb.score) {
            bail!("a rating does not match its signed request");
        }
        if !sessions.contains(&(fb.session_id.clone(), req.signer)) {
            bail!("a rating names a session without a receipt of both sides");
        }
        ratings.push(Rating {
            rater: req.signer,
            score: fb.score,
            ts_ms: f["ts_ms"].as_u64().context("ts_ms")?,
            rater_tier: serde_json::from_value(f["rater_tier"].clone())?,
            rater_registered_ms: f["rater_registered_ms"]
                .as_u64()
                .context("rater_registered_ms")?,
            origin: f["origin"].as_str().unwrap_or("").to_owned(),
        });
    }
    let rated: HashSet<Amid> = serde_json::from_value(ev["rated"].clone())?;
    let score = reputation::score(
        &Evidence {
            tier,
            registered_ms,
            outcomes: &outcomes,
            ratings: &ratings,
            rated_by_subject: &rated,
        },
        at,
    );
    Ok(Verified {
        recomputed: score.score,
        reported: ev["score"]["score"].as_f64().context("score")?,
        receipts: outcomes.len(),
        ratings: ratings.len(),
    })
}

/// `agentmesh reputation verify`.
/// `agentmesh reputation rate`.
pub(crate) async fn rate(
    identity: &Identity,
    amid: &Amid,
    session: &str,
    score: f64,
    registry: &RegistryArg,
    json_out: bool,
) -> Result<()> {
    if !(0.0..=1.0).contains(&score) {
        bail!("the score is between 0 and 1");
    }
    let client = RegistryClient::new(&registry.registry)?;
    let op = Operation::Feedback(Feedback::new(session, *amid, score));
    let v = client
        .signed("/v1/registry/reputation", identity, op)
        .await?;
    if json_out {
        println!("{v}");
    } else {
        println!("rated {amid} {score} for session {session}");
    }
    Ok(())
}

/// `agentmesh reputation verify`.
pub(crate) async fn reputation(amid: &Amid, registry: &RegistryArg, json_out: bool) -> Result<()> {
    let client = RegistryClient::new(&registry.registry)?;
    let ev = client
        .get(&format!("/v1/registry/reputation/evidence?amid={amid}"))
        .await?;
    let v = recompute(amid, &ev)?;
    let ok = (v.recomputed - v.reported).abs() < 1e-9;
    if json_out {
        println!(
            "{}",
            json!({"amid": amid, "ok": ok, "recomputed": v.recomputed, "reported": v.reported,
                   "receipts": v.receipts, "ratings": v.ratings})
        );
    } else {
        println!(
            "{amid}: {} receipts and {} ratings checked; recomputed {:.6}, registry says {:.6}: {}",
            v.receipts,
            v.ratings,
            v.recomputed,
            v.reported,
            if ok { "OK" } else { "MISMATCH" }
        );
    }
    if !ok {
        bail!("the registry's score does not follow from its evidence");
    }
    Ok(())
}
