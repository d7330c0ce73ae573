//! The CLI's registry client over libp2p (`/agentmesh/registry/1`), used
//! when `--registry` is a multiaddr ending in `/p2p/<peer id>` instead of an
//! http(s) URL: the library's [`registry::Client`](agentmesh_node::registry::Client)
//! (a small swarm of its own), with the HTTP API paths the commands use
//! mapped onto protocol requests, so every command answers the same JSON
//! either way.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use agentmesh_node::{
    registry::{
        protocol::{Request, Response},
        Client, SignedRequest,
    },
    Amid, Multiaddr,
};

/// Time for one request, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a registry node.
pub(crate) struct P2pRegistry {
    client: Client,
}

impl P2pRegistry {
    /// Dials the registry node at `addr`.
    pub(crate) fn connect(addr: &Multiaddr) -> Result<Self> {
        Ok(Self {
            client: Client::connect(addr)?,
        })
    }

    async fn ask(&self, request: Request) -> Result<(hyper::StatusCode, Value)> {
        let response = self
            .client
            .call(&request, TIMEOUT)
            .await
            .with_context(|| format!("registry {}", self.client.peer()))?;
        Ok(match response {
            Response::Ok { body } => (hyper::StatusCode::OK, body),
            Response::Error { code, message } => (
                hyper::StatusCode::BAD_REQUEST,
                json!({"error": {"code": code, "message": message}}),
            ),
            _ => bail!("unexpected answer from the registry"),
        })
    }

    /// A GET of an HTTP API path, over the protocol.
    pub(crate) async fn get(&self, path_and_query: &str) -> Result<(hyper::StatusCode, Value)> {
        self.ask(request_for(path_and_query)?).await
    }

    /// A signed request (the operation is in its body).
    pub(crate) async fn signed(
        &self,
        request: SignedRequest,
    ) -> Result<(hyper::StatusCode, Value)> {
        self.ask(Request::Signed { request }).await
    }
}

/// The protocol request that answers the HTTP API's `GET path_and_query`.
pub(crate) fn request_for(path_and_query: &str) -> Result<Request> {
    let url = url::Url::parse("http://registry")?.join(path_and_query)?;
    let q = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let amid = || -> Result<Amid> { Ok(q("amid").context("amid")?.parse()?) };
    let num = |k: &str| -> Result<Option<u64>> {
        q(k).map(|v| v.parse().with_context(|| k.to_owned()))
            .transpose()
    };
    Ok(match url.path() {
        "/v1/registry/lookup" => Request::Lookup { amid: amid()? },
        "/v1/registry/search" => Request::Search {
            capability: q("capability").context("capability")?,
            tier_min: q("tier_min")
                .map(|t| serde_json::from_value(json!(t)).context("tier_min"))
                .transpose()?,
            reputation_min: q("reputation_min")
                .map(|r| r.parse().context("reputation_min"))
                .transpose()?,
            limit: num("limit")?.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        },
        "/v1/registry/revocation" => Request::Revocation { amid: amid()? },
        "/v1/registry/credentials" => Request::Credentials { amid: amid()? },
        "/v1/registry/root" => Request::Root,
        "/v1/log/head" => Request::LogHead { size: num("size")? },
        "/v1/log/proof" => Request::LogProof {
            index: num("index")?,
            hash: q("hash"),
            size: num("size")?,
        },
        "/v1/log/consistency" => Request::LogConsistency {
            first: num("first")?.context("first")?,
            second: num("second")?,
        },
        "/v1/registry/reputation/evidence" => Request::Evidence { amid: amid()? },
        "/v1/registry/reputation/leaderboard" => Request::Leaderboard {
            limit: num("limit")?.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        },
        p => {
            if let Some(a) = p.strip_prefix("/v1/registry/did/") {
                Request::Did { amid: a.parse()? }
            } else if let Some(d) = p.strip_prefix("/v1/org/").filter(|d| !d.contains('/')) {
                // Domains are plain ASCII (lowercase letters, digits, '-', '.').
                Request::Org {
                    domain: d.to_owned(),
                }
            } else {
                bail!("{p} is served over HTTP only; give the registry's http(s) URL")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_node::{Identity, Tier};

    #[test]
    fn api_paths_map_to_protocol_requests() {
        let a = Identity::from_seed(&[1; 32]).amid();
        assert_eq!(
            request_for(&format!("/v1/registry/lookup?amid={a}")).unwrap(),
            Request::Lookup { amid: a }
        );
        assert_eq!(
            request_for("/v1/registry/search?capability=weather%2Fx&tier_min=verified&reputation_min=0.5&limit=3")
                .unwrap(),
            Request::Search {
                capability: "weather/x".into(),
                tier_min: Some(Tier::Verified),
                reputation_min: Some(0.5),
                limit: Some(3),
            }
        );
        assert_eq!(
            request_for(&format!("/v1/registry/did/{a}")).unwrap(),
            Request::Did { amid: a }
        );
        assert_eq!(
            request_for("/v1/log/consistency?first=2").unwrap(),
            Request::LogConsistency {
                first: 2,
                second: None
            }
        );
        assert!(request_for("/v1/registry/reputation/evidence?amid=x").is_err());
        assert_eq!(
            request_for(&format!("/v1/registry/reputation/evidence?amid={a}")).unwrap(),
            Request::Evidence { amid: a }
        );
        assert_eq!(
            request_for("/v1/registry/reputation/leaderboard?limit=5").unwrap(),
            Request::Leaderboard { limit: Some(5) }
        );
        assert_eq!(
            request_for("/v1/org/example.com").unwrap(),
            Request::Org {
                domain: "example.com".into()
            }
        );
        assert!(request_for("/v1/registry/stats").is_err());
        assert!(request_for("/v1/registry/search?capability=x&tier_min=gold").is_err());
    }
}
