//! Tier 1.5 verification: an organization proves it controls a domain by
//! publishing a registry-issued token in a DNS TXT record at
//! `_agentmesh.<domain>`.
//!
//! ```text
//! org ── POST /register/org {domain, org key} ──▶ registry: Challenge::new(domain)
//!     ◀── 200 {name: "_agentmesh.example.org.", value: "agentmesh-verify=<token>"}
//! org publishes   _agentmesh.example.org. TXT "agentmesh-verify=<token>"
//! org ── POST /register/org/verify ──▶ registry: DnsVerifier::verify(&challenge)
//!                                      (TXT lookup at the configured nameserver)
//! ```
//!
//! The token is 32 random bytes (base64url) and expires after
//! [`CHALLENGE_TTL_MS`]; the registry keeps the [`Challenge`] (it is
//! `Serialize`) with the pending registration. An absent record, a record
//! with another token or an expired challenge are typed errors with a
//! stable [`DnsChallengeError::code`]. The resolver asks one configurable
//! nameserver (`address:port`) without caching, so a record published after
//! a failed check is seen at the next one.
//!
//! ```no_run
//! use agentmesh_bootstrap::dns::{Challenge, DnsVerifier};
//!
//! # async fn run(now_ms: u64) -> Result<(), agentmesh_bootstrap::dns::DnsChallengeError> {
//! let challenge = Challenge::new("example.org", now_ms)?;
//! println!("{} TXT \"{}\"", challenge.record_name(), challenge.record_value());
//! // ... once the organization has published the record:
//! let verifier = DnsVerifier::new("9.9.9.9:53".parse().expect("address"))?;
//! verifier.verify(&challenge, now_ms).await?;
//! # Ok(())
//! # }
//! ```

use std::{net::SocketAddr, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError},
    proto::{op::ResponseCode, rr::RData},
    Resolver,
};
use serde::{Deserialize, Serialize};

/// The label the TXT record lives under.
pub const CHALLENGE_LABEL: &str = "_agentmesh";
/// Prefix of the record's value, before the token.
pub const TXT_PREFIX: &str = "agentmesh-verify=";
/// Lifetime of a challenge.
pub const CHALLENGE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Timeout of one DNS query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most TXT strings looked at in one answer.
pub const MAX_TXT_RECORDS: usize = 64;

/// Why a domain challenge failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsChallengeError {
    /// The domain is not a valid DNS name of at least two labels.
    #[error("invalid domain: {0}")]
    InvalidDomain(String),
    /// No TXT record exists at `_agentmesh.<domain>`.
    #[error("no TXT record at {name}")]
    NoRecord {
        /// The name looked up.
        name: String,
    },
    /// TXT records exist but none holds the issued token.
    #[error("no TXT record at {name} holds the challenge token ({found} records found)")]
    WrongToken {
        /// The name looked up.
        name: String,
        /// How many TXT strings were found.
        found: usize,
    },
    /// The challenge expired: ask for a new one.
    #[error("challenge expired")]
    Expired,
    /// The nameserver failed or did not answer.
    #[error("DNS lookup failed: {0}")]
    Lookup(String),
    /// The system's random number generator failed.
    #[error("no randomness available")]
    NoRandomness,
}

impl DnsChallengeError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidDomain(_) => "dns_invalid_domain",
            Self::NoRecord { .. } => "dns_no_record",
            Self::WrongToken { .. } => "dns_wrong_token",
            Self::Expired => "dns_challenge_expired",
            Self::Lookup(_) => "dns_lookup_failed",
            Self::NoRandomness => "internal",
        }
    }

    /// Whether the caller is at fault (a 4xx answer).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidDomain(_)
                | Self::NoRecord { .. }
                | Self::WrongToken { .. }
                | Self::Expired
        )
    }
}

/// Checks and normalizes a domain: lowercase, no trailing dot, at least two
/// labels of `[a-z0-9-]` (1 to 63 characters, no leading or trailing `-`),
/// at most 253 characters.
pub fn normalize_domain(domain: &str) -> Result<String, DnsChallengeError> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let bad = || DnsChallengeError::InvalidDomain(domain.chars().take(64).collect());
    if d.is_empty() || d.len() > 253 {
        return Err(bad());
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(bad());
    }
    for l in &labels {
        if l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
    }
    Ok(d)
}

/// A challenge issued to an organization for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Challenge {
    /// The normalized domain.
    pub domain: String,
    /// The random token the record must hold.
    pub token: String,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
}

impl Challenge {
    /// A new challenge for `domain` with a random token.
    pub fn new(domain: &str, now_ms: u64) -> Result<Self, DnsChallengeError> {
        let domain = normalize_domain(domain)?;
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|_| DnsChallengeError::NoRandomness)?;
        Ok(Self {
            domain,
            token: URL_SAFE_NO_PAD.encode(b),
            expires_ms: now_ms.saturating_add(CHALLENGE_TTL_MS),
        })
    }

    /// The fully qualified name of the record: `_agentmesh.<domain>.`.
    pub fn record_name(&self) -> String {
        format!("{CHALLENGE_LABEL}.{}.", self.domain)
    }

    /// The value the TXT record must hold: `agentmesh-verify=<token>`.
    pub fn record_value(&self) -> String {
        format!("{TXT_PREFIX}{}", self.token)
    }
}

/// Looks challenges up at one nameserver.
#[derive(Debug)]
pub struct DnsVerifier {
    resolver: Resolver<TokioRuntimeProvider>,
}

impl DnsVerifier {
    /// A verifier asking the nameserver at `nameserver` (UDP, then TCP for
    /// truncated answers), without caching; each query times out after
    /// [`QUERY_TIMEOUT`].
    pub fn new(nameserver: SocketAddr) -> Result<Self, DnsChallengeError> {
        Self::with_timeout(nameserver, QUERY_TIMEOUT)
    }

    /// Same as [`DnsVerifier::new`] with another query timeout.
    pub fn with_timeout(
        nameserver: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, DnsChallengeError> {
        let mut udp = ConnectionConfig::new(ProtocolConfig::Udp);
        udp.port = nameserver.port();
        let mut tcp = ConnectionConfig::new(ProtocolConfig::Tcp);
        tcp.port = nameserver.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            nameserver.ip(),
            true,
            vec![udp, tcp],
        )]);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.cache_size = 0;
        opts.ndots = 0;
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts);
        builder.options_mut().edns0 = true;
        Ok(Self {
            resolver: builder
                .build()
                .map_err(|e| DnsChallengeError::Lookup(e.to_string()))?,
        })
    }

    /// Checks that `_agentmesh.<domain>` holds the challenge's token.
    pub async fn verify(
        &self,
        challenge: &Challenge,
        now_ms: u64,
    ) -> Result<(), DnsChallengeError> {
        if now_ms >= challenge.expires_ms {
            return Err(DnsChallengeError::Expired);
        }
        let name = challenge.record_name();
        let values = self.txt(&name).await?;
        let expected = challenge.record_value();
        let found = values.len();
        if values.iter().any(|v| v.trim() == expected) {
            tracing::info!(target: "agentmesh::dns", domain = %challenge.domain, "domain verified");
            Ok(())
        } else {
            Err(DnsChallengeError::WrongToken { name, found })
        }
    }

    /// The TXT values at `name` (the strings of each record joined, as
    /// RFC 7208 does for long values).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsChallengeError> {
        let lookup = match self.resolver.txt_lookup(name).await {
            Ok(l) => l,
            Err(e) if is_no_record(&e) => {
                return Err(DnsChallengeError::NoRecord {
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(DnsChallengeError::Lookup(e.to_string())),
        };
        let values: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .take(MAX_TXT_RECORDS)
            .collect();
        if values.is_empty() {
            return Err(DnsChallengeError::NoRecord {
                name: name.to_string(),
            });
        }
        Ok(values)
    }
}

fn is_no_record(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::NoRecordsFound(_))
            | NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::Name;

    use crate::loopback::DnsServer;

    async fn dns_server() -> DnsServer {
        DnsServer::spawn().await.unwrap()
    }

    fn publish(dns: &DnsServer, name: &str, values: &[&str]) {
        dns.publish(name, values);
    }

    const NOW: u64 = 1_700_000_000_000;

    #[tokio::test]
    async fn txt_challenge_is_verified_at_a_real_nameserver() {
        let dns = dns_server().await;
        let verifier = DnsVerifier::new(dns.addr).unwrap();
        let c = Challenge::new("Example.ORG.", NOW).unwrap();
        assert_eq!(c.domain, "example.org");
        assert_eq!(c.record_name(), "_agentmesh.example.org.");

        // Nothing published yet.
        let err = verifier.verify(&c, NOW).await.unwrap_err();
        assert!(
            matches!(&err, DnsChallengeError::NoRecord { name } if name == "_agentmesh.example.org."),
            "{err:?}"
        );
        assert_eq!(err.code(), "dns_no_record");
        assert!(err.is_client_error());

        // Another token (an older challenge, or someone else's).
        publish(
            &dns,
            "_agentmesh.example.org.",
            &["v=spf1 -all", "agentmesh-verify=not-the-token"],
        );
        let err = verifier.verify(&c, NOW).await.unwrap_err();
        assert!(
            matches!(err, DnsChallengeError::WrongToken { found: 2, .. }),
            "{err:?}"
        );

        // The right token, next to other records: verified, and not from a
        // cache of the earlier answers.
        let before = dns.queries();
        publish(
            &dns,
            "_agentmesh.example.org.",
            &["v=spf1 -all", &c.record_value()],
        );
        verifier.verify(&c, NOW).await.unwrap();
        assert!(dns.queries() > before);

        // A token published for another domain does not count.
        let other = Challenge::new("other.example", NOW).unwrap();
        publish(&dns, "_agentmesh.example.org.", &[&other.record_value()]);
        assert!(matches!(
            verifier.verify(&other, NOW).await,
            Err(DnsChallengeError::NoRecord { .. })
        ));

        // Expired.
        assert!(matches!(
            verifier.verify(&c, c.expires_ms).await,
            Err(DnsChallengeError::Expired)
        ));
    }

    #[tokio::test]
    async fn an_unreachable_nameserver_is_a_lookup_error() {
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let verifier =
            DnsVerifier::with_timeout(silent.local_addr().unwrap(), Duration::from_millis(300))
                .unwrap();
        let c = Challenge::new("example.org", NOW).unwrap();
        let err = verifier.verify(&c, NOW).await.unwrap_err();
        assert!(matches!(err, DnsChallengeError::Lookup(_)), "{err:?}");
        assert!(!err.is_client_error());
    }

    #[test]
    fn domains_are_checked() {
        for bad in [
            "",
            "org",
            "-a.org",
            "a-.org",
            "a..org",
            "a b.org",
            "ex_ample.org",
            &format!("{}.org", "a".repeat(64)),
            &"a.".repeat(130),
        ] {
            assert!(
                matches!(
                    Challenge::new(bad, NOW),
                    Err(DnsChallengeError::InvalidDomain(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            normalize_domain("Sub.Example.COM.").unwrap(),
            "sub.example.com"
        );
        let a = Challenge::new("example.org", NOW).unwrap();
        let b = Challenge::new("example.org", NOW).unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 43);
        let _ = Name::from_ascii(a.record_name()).unwrap();
    }
}
