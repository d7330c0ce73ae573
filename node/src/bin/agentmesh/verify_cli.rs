//! `agentmesh verify`: prove a tier to a registry and store the credentials
//! it issues (certificate chain, transparency-log proof, reputation
//! attestation) in the data directory, where `agentmesh run` loads them.
//!
//! - `--oauth <provider>`: the registry's OAuth authorization-code + PKCE
//!   flow. The CLI prints the provider URL to open (or, with `--follow`,
//!   follows its redirects itself) and waits until the registry has issued
//!   the tier 1 certificate.
//! - `--org <domain>`: the agent's key registers the organization, the CLI
//!   prints the TXT record to publish at `_agentmesh.<domain>` and asks the
//!   registry to check it until it is found; then it signs its own agent
//!   certificate under the organization and files it (tier 1.5).
//! - neither: fetch the current credentials again (a fresh proof and
//!   attestation).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use agentmesh_node::{
    control::{Client, Request},
    registry::Operation,
    trust::cert::{CertKind, Certificate, SignedCertificate, CERT_VERSION},
    trust::credentials::{self, Credentials},
    Amid, Identity, Tier,
};

use crate::registry_cli::{RegistryArg, RegistryClient};

/// How often the registry is asked again while waiting.
const POLL: Duration = Duration::from_secs(1);
/// Most redirects followed with `--follow`.
const MAX_REDIRECTS: usize = 10;

/// What `agentmesh verify` was asked to do.
#[derive(Debug)]
pub(crate) enum Method<'a> {
    /// OAuth with this provider name; follow redirects here.
    OAuth { provider: &'a str, follow: bool },
    /// DNS TXT challenge for this domain, organization name.
    Org { domain: &'a str, name: &'a str },
    /// Fetch the credentials again.
    Refresh,
}

fn print(json_out: bool, v: &Value, text: &str) {
    if json_out {
        println!("{v}");
    } else {
        println!("{text}");
    }
}

/// Runs `agentmesh verify`.
pub(crate) async fn verify(
    identity: &Identity,
    dir: &Path,
    registry: &RegistryArg,
    method: Method<'_>,
    timeout: Duration,
    json_out: bool,
) -> Result<()> {
    let client = RegistryClient::new(&registry.registry)?;
    let amid = identity.amid();
    let before = fetch(&client, &amid).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    match method {
        Method::OAuth { provider, follow } => {
            let v = client
                .signed(
                    "/v1/auth/oauth/authorize",
                    identity,
                    Operation::OauthAuthorize {},
                )
                .await?;
            let offered = v["provider"].as_str().unwrap_or_default();
            if offered != provider {
                bail!("this registry verifies with `{offered}`, not `{provider}`");
            }
            let url = v["authorize_url"]
                .as_str()
                .context("no authorize_url in the answer")?;
            print(
                json_out,
                &json!({"event": "authorize", "provider": provider, "url": url}),
                &format!("open this URL to sign in with {provider}:\n{url}"),
            );
            if follow {
                follow_redirects(&client, url).await?;
            }
            wait_for(&client, &amid, deadline, |t, c| {
                t != Tier::Anonymous && c.chain.is_some() && c.chain != before.1.chain
            })
            .await?;
        }
        Method::Org { domain, name } => {
            verify_org(&client, identity, domain, name, deadline, json_out).await?;
        }
        Method::Refresh => {}
    }
    let (tier, creds) = fetch(&client, &amid).await?;
    check_against_root(&client, &amid, &creds).await?;
    credentials::save(dir, &creds)?;
    let index = creds.inclusion.as_ref().map(|i| i.proof.leaf_index);
    // An agent running on this data directory shows them at once.
    let reloaded = match Client::connect(dir).await {
        Ok(mut c) => c
            .request(&Request::Credentials { renew: false })
            .await
            .is_ok_and(|r| r.ok),
        Err(_) => false,
    };
    print(
        json_out,
        &json!({"event": "stored", "amid": amid, "tier": tier, "log_index": index,
                "file": dir.join(credentials::CREDENTIALS_FILE), "reloaded": reloaded}),
        &format!(
            "tier {tier:?} credentials stored in {} ({})",
            dir.join(credentials::CREDENTIALS_FILE).display(),
            if reloaded {
                "the running agent shows them now"
            } else {
                "loaded by `agentmesh run`"
            }
        ),
    );
    Ok(())
}

/// The tier and credentials the registry has for `amid`.
async fn fetch(client: &RegistryClient, amid: &Amid) -> Result<(Tier, Credentials)> {
    let v = client
        .get(&format!("/v1/registry/credentials?amid={amid}"))
        .await
        .context("fetching credentials (is this agent registered? `agentmesh register`)")?;
    let tier: Tier = serde_json::from_value(v["tier"].clone()).context("tier")?;
    let bytes = hex::decode(v["credentials"].as_str().unwrap_or_default())
        .context("credentials are not hex")?;
    Ok((tier, Credentials::from_bytes(&bytes)?))
}

/// Asks for the credentials until `done` holds or `deadline` passes.
async fn wait_for(
    client: &RegistryClient,
    amid: &Amid,
    deadline: tokio::time::Instant,
    done: impl Fn(Tier, &Credentials) -> bool,
) -> Result<()> {
    loop {
        let (tier, creds) = fetch(client, amid).await?;
        if done(tier, &creds) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting for the registry to issue the certificate");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// GETs `url` and the redirects it leads to (the provider consenting at
/// once, then the registry's callback).
async fn follow_redirects(client: &RegistryClient, url: &str) -> Result<()> {
    let mut url = url::Url::parse(url).context("authorize URL")?;
    for _ in 0..MAX_REDIRECTS {
        let (status, location, body) = client.raw("GET", url.as_str(), None).await?;
        if status.is_redirection() {
            let to = location.context("redirect without a Location")?;
            url = url.join(&to).context("redirect Location")?;
            continue;
        }
        if !status.is_success() {
            bail!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        return Ok(());
    }
    bail!("more than {MAX_REDIRECTS} redirects")
}

/// Checks the credentials against the registry's root key, as a receiving
/// node will (chain, log proof, attestation).
async fn check_against_root(
    client: &RegistryClient,
    amid: &Amid,
    creds: &Credentials,
) -> Result<()> {
    let v = client.get("/v1/registry/root").await?;
    let root: Amid = v["root"]
        .as_str()
        .context("no root in the answer")?
        .parse()
        .context("root")?;
    credentials::check(
        creds,
        amid,
        &root.verifying_key()?,
        creds.chain.is_some(),
        agentmesh_dht::now_ms(),
        |_| false,
    )
    .context("the registry's credentials do not verify")?;
    Ok(())
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn verify_org(
    client: &RegistryClient,
    identity: &Identity,
    domain: &str,
    name: &str,
    deadline: tokio::time::Instant,
    json_out: bool,
) -> Result<()> {
    let amid = identity.amid();
    // An unknown or unverified organization is registered (again).
    let info = match client
        .try_call("GET", &format!("/v1/org/{domain}"), None)
        .await
    {
        Ok((status, v)) if status.is_success() => v,
        _ => Value::Null,
    };
    let verified = info["verified"] == true;
    if verified && info["key"] != json!(amid) {
        bail!("{domain} is registered with another key");
    }
    let org_cert_hex = if verified {
        info["certificate"].as_str().unwrap_or_default().to_owned()
    } else {
        let op = Operation::OrgRegister {
            domain: domain.to_owned(),
            name: name.to_owned(),
        };
        let v = client.signed("/v1/org/register", identity, op).await?;
        let (txt_name, txt_value) = (
            v["txt_name"].as_str().unwrap_or_default(),
            v["txt_value"].as_str().unwrap_or_default(),
        );
        print(
            json_out,
            &json!({"event": "publish", "txt_name": txt_name, "txt_value": txt_value}),
            &format!("publish this DNS record, then wait:\n{txt_name}. TXT \"{txt_value}\""),
        );
        loop {
            let op = Operation::OrgVerify {
                domain: domain.to_owned(),
            };
            let req = agentmesh_node::registry::SignedRequest::sign(
                identity,
                op,
                agentmesh_dht::now_ms(),
            )?;
            let (status, v) = client
                .try_call("POST", "/v1/org/verify", Some(serde_json::to_vec(&req)?))
                .await?;
            if status.is_success() {
                break v["certificate"].as_str().unwrap_or_default().to_owned();
            }
            if error_code(&v) != "verification_failed" {
                bail!(
                    "{status}: {} ({})",
                    v["error"]["message"].as_str().unwrap_or("error"),
                    error_code(&v)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out: the registry did not find the TXT record");
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let org_cert = SignedCertificate::from_bytes(
        &hex::decode(&org_cert_hex).context("organization certificate is not hex")?,
    )?
    .certificate()?;
    // The organization key (this agent's) signs the agent certificate.
    let now = agentmesh_dht::now_ms();
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let cert = Certificate {
        version: CERT_VERSION,
        kind: CertKind::Agent,
        subject_key: *amid.as_bytes(),
        subject_name: domain.to_owned(),
        tier: Tier::Organization,
        issuer_key: *amid.as_bytes(),
        serial,
        not_before_ms: now.saturating_sub(60_000),
        not_after_ms: org_cert.not_after_ms,
    }
    .sign_as(identity)?;
    let op = Operation::OrgAgent {
        agent: amid,
        certificate: hex::encode(cert.to_bytes()?),
    };
    client.signed("/v1/org/agents", identity, op).await?;
    let (tier, creds) = fetch(client, &amid).await?;
    if tier != Tier::Organization || creds.chain.as_ref().map(|c| c.0.len()) != Some(2) {
        bail!("the registry did not record the organization certificate");
    }
    Ok(())
}
