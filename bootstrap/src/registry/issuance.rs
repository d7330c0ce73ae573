//! Issuance: tier certificates signed by the root key and what proves
//! them. Tier 1 after an OAuth login ([`Registry::oauth_callback`]); tier
//! 1.5 for agents of an organization that proved its domain with a DNS TXT
//! challenge ([`dns_challenge`], [`Registry::verify_org`]) and signed the
//! agent's certificate. Every certificate is logged; [`Registry::credentials_for`]
//! bundles a chain with its inclusion proof and a reputation attestation.

use std::time::Duration;

use serde::Serialize;
use tracing::info;

use agentmesh_node::{
    registry::SignedRequest,
    trust::cert::{CertChain, CertKind, Certificate, Revocable, SignedCertificate, CERT_VERSION},
    trust::credentials::{Credentials, LogInclusion, Reputation, ReputationAttestation},
    Amid, Tier,
};

use super::{random16, OrgRecord, Registry, RegistryError, StoreError};

/// Longest organization name.
pub const MAX_ORG_NAME: usize = 128;
/// DNS label under which an organization publishes its challenge.
pub const DNS_CHALLENGE_LABEL: &str = "_agentmesh";
/// Prefix of the TXT record value.
pub const DNS_CHALLENGE_PREFIX: &str = "agentmesh-verify=";

/// The answer to `org_register`: the TXT record to publish.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OrgChallenge {
    /// The organization's domain.
    pub domain: String,
    /// The organization key.
    pub key: Amid,
    /// Whether the domain is verified already.
    pub verified: bool,
    /// Where to publish the TXT record.
    pub txt_name: String,
    /// What it must hold.
    pub txt_value: String,
}

impl OrgChallenge {
    fn of(org: &OrgRecord) -> Self {
        let (txt_name, txt_value) = dns_challenge(org);
        Self {
            domain: org.domain.clone(),
            key: org.key,
            verified: org.verified,
            txt_name,
            txt_value,
        }
    }
}

/// The answer to `org_verify`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OrgVerified {
    /// The domain.
    pub domain: String,
    /// Always true.
    pub verified: bool,
    /// The organization certificate, CBOR hex.
    pub certificate: String,
}

/// The answer to `org_agent`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OrgAgentFiled {
    /// The agent.
    pub agent: Amid,
    /// Its organization's domain.
    pub org: String,
    /// The tier its chain gives.
    pub tier: Tier,
    /// Where the chain is in the transparency log.
    pub log_index: u64,
}

/// The answer to `oauth_authorize`: where the agent's owner logs in.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OauthStarted {
    /// The agent.
    pub amid: Amid,
    /// The provider's name.
    pub provider: String,
    /// The provider's authorization URL for this flow.
    pub authorize_url: String,
}

/// The answer to the OAuth callback: the tier 1 certificate issued.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OauthIssued {
    /// The agent.
    pub amid: Amid,
    /// Its tier (verified).
    pub tier: Tier,
    /// `provider:subject`.
    pub subject: String,
    /// The certificate chain, CBOR hex.
    pub certificate: String,
    /// Its inclusion proof in the log.
    pub inclusion: Option<LogInclusion>,
    /// The credentials a node loads, CBOR hex.
    pub credentials: String,
}

/// An agent's credentials as the API returns them.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CredentialsView {
    /// The agent.
    pub amid: Amid,
    /// Its tier.
    pub tier: Tier,
    /// Its certificate chain, CBOR hex, if any.
    pub certificate: Option<String>,
    /// The chain's inclusion proof in the log.
    pub inclusion: Option<LogInclusion>,
    /// The credentials a node loads, CBOR hex.
    pub credentials: String,
}

/// An agent of an organization.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OrgAgent {
    /// The agent.
    pub amid: Amid,
    /// Its display name.
    pub display_name: String,
    /// Whether it is revoked.
    pub revoked: bool,
}

/// An organization and its agents.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OrgInfo {
    /// The domain.
    pub domain: String,
    /// Display name.
    pub name: String,
    /// The organization key.
    pub key: Amid,
    /// Whether its domain is verified.
    pub verified: bool,
    /// Its certificate, CBOR hex, once verified.
    pub certificate: Option<String>,
    /// Its agents.
    pub agents: Vec<OrgAgent>,
}

/// The TXT record name and value an organization publishes.
pub fn dns_challenge(org: &OrgRecord) -> (String, String) {
    (
        format!("{DNS_CHALLENGE_LABEL}.{}", org.domain),
        format!("{DNS_CHALLENGE_PREFIX}{}", org.challenge),
    )
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && !d.starts_with('.')
        && !d.ends_with('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Registry {
    fn new_cert(
        &self,
        kind: CertKind,
        subject_key: [u8; 32],
        subject_name: &str,
        tier: Tier,
        validity: Duration,
        now_ms: u64,
    ) -> Result<SignedCertificate, RegistryError> {
        let cert = Certificate {
            version: CERT_VERSION,
            kind,
            subject_key,
            subject_name: subject_name.to_owned(),
            tier,
            issuer_key: *self.root_amid().as_bytes(),
            serial: random16()?,
            not_before_ms: now_ms.saturating_sub(60_000),
            not_after_ms: now_ms.saturating_add(validity.as_millis() as u64),
        };
        Ok(cert.sign_as(self.root())?)
    }

    /// A tier 1 agent certificate for `amid`, named `subject_name`.
    pub(super) fn new_agent_cert(
        &self,
        amid: &Amid,
        subject_name: &str,
        now_ms: u64,
    ) -> Result<SignedCertificate, RegistryError> {
        self.new_cert(
            CertKind::Agent,
            *amid.as_bytes(),
            subject_name,
            Tier::Verified,
            self.inner.settings.agent_cert_validity,
            now_ms,
        )
    }

    /// Issues a tier 1 certificate to `amid` after its owner proved an
    /// account at an OAuth provider (`subject_name` = `provider:subject`),
    /// stores it on the agent and returns the chain. An agent of an
    /// organization keeps its tier 1.5 chain.
    pub async fn issue_verified(
        &self,
        amid: &Amid,
        subject_name: &str,
        now_ms: u64,
    ) -> Result<CertChain, RegistryError> {
        let old = self.live_agent(amid)?;
        let cert = self.new_agent_cert(amid, subject_name, now_ms)?;
        let chain = CertChain(vec![cert]);
        self.log_append_leaf(&Credentials::log_leaf(&chain)?)?;
        if old.tier != Tier::Organization {
            let mut rec = old.clone();
            rec.tier = Tier::Verified;
            rec.certificate = Some(hex::encode(chain.to_bytes()?));
            self.put_agent(&rec, Some(&old))?;
        }
        self.flush().await?;
        info!(target: "agentmesh::registry", %amid, subject_name, "tier 1 certificate issued");
        Ok(chain)
    }

    fn oauth(&self) -> Result<std::sync::Arc<crate::oauth::OAuth>, RegistryError> {
        self.inner
            .oauth
            .get()
            .cloned()
            .ok_or_else(|| RegistryError::NotConfigured("OAuth verification".into()))
    }

    pub(super) fn oauth_authorize(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        now_ms: u64,
    ) -> Result<OauthStarted, RegistryError> {
        let oauth = self.oauth()?;
        self.live_agent(signer)?;
        self.mark_seen(req, now_ms)?;
        let url = oauth.start(*signer, now_ms)?;
        Ok(OauthStarted {
            amid: *signer,
            provider: oauth.provider().name.clone(),
            authorize_url: url.to_string(),
        })
    }

    /// Finishes an OAuth verification (the provider's redirect): checks the
    /// state, exchanges the code, and issues the tier 1 certificate to the
    /// agent that started the flow.
    pub async fn oauth_callback(
        &self,
        params: &crate::oauth::CallbackParams,
        now_ms: u64,
    ) -> Result<OauthIssued, RegistryError> {
        let oauth = self.oauth()?;
        let subject = oauth.finish(params, now_ms).await?;
        let name = format!("{}:{}", subject.provider, subject.subject);
        let chain = self.issue_verified(&subject.amid, &name, now_ms).await?;
        let creds = self.credentials_for(&subject.amid, Some(chain.clone()), now_ms)?;
        Ok(OauthIssued {
            amid: subject.amid,
            tier: Tier::Verified,
            subject: name,
            certificate: hex::encode(chain.to_bytes()?),
            inclusion: creds.inclusion.clone(),
            credentials: hex::encode(creds.to_bytes()?),
        })
    }

    pub(super) fn org_register(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        domain: String,
        name: String,
        now_ms: u64,
    ) -> Result<OrgChallenge, RegistryError> {
        if !valid_domain(&domain) {
            return Err(RegistryError::Invalid(
                "domain must be a lowercase DNS name".into(),
            ));
        }
        if name.is_empty() || name.len() > MAX_ORG_NAME {
            return Err(RegistryError::Invalid("name length".into()));
        }
        if self.is_revoked_key(signer.as_bytes())? {
            return Err(RegistryError::Revoked);
        }
        if let Some(o) = self.inner.store.org(&domain)? {
            if o.key != *signer || o.verified {
                return Err(RegistryError::Conflict("domain already registered".into()));
            }
        }
        if let Some(o) = self.inner.store.org_by_key(signer)? {
            if o.domain != domain {
                return Err(RegistryError::Conflict(
                    "key already names another domain".into(),
                ));
            }
        }
        let challenge = hex::encode(random16()?);
        let org = OrgRecord {
            domain,
            name,
            key: *signer,
            challenge,
            verified: false,
            certificate: None,
            registered_ms: now_ms,
        };
        self.mark_seen(req, now_ms)?;
        self.inner.store.put_org(&org)?;
        Ok(OrgChallenge::of(&org))
    }

    fn org_or_not_found(&self, domain: &str) -> Result<OrgRecord, RegistryError> {
        self.inner
            .store
            .org(domain)?
            .ok_or_else(|| RegistryError::NotFound(format!("organization {domain}")))
    }

    pub(super) async fn org_verify(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        domain: String,
        now_ms: u64,
    ) -> Result<OrgVerified, RegistryError> {
        let org = self.org_or_not_found(&domain)?;
        if org.key != *signer {
            return Err(RegistryError::Forbidden(
                "not this organization's key".into(),
            ));
        }
        if org.verified {
            return Err(RegistryError::Conflict("already verified".into()));
        }
        let verifier = self
            .inner
            .verifier
            .get()
            .cloned()
            .ok_or_else(|| RegistryError::NotConfigured("DNS verification".into()))?;
        let (name, value) = dns_challenge(&org);
        let ok = verifier
            .verify(&name, &value)
            .await
            .map_err(|e| RegistryError::VerificationFailed(e.to_string()))?;
        if !ok {
            return Err(RegistryError::VerificationFailed(format!(
                "TXT {name} does not hold {value}"
            )));
        }
        self.mark_seen(req, now_ms)?;
        let cert = self.verify_org(&domain, now_ms)?;
        Ok(OrgVerified {
            domain,
            verified: true,
            certificate: hex::encode(cert.to_bytes()?),
        })
    }

    /// Marks `domain` verified (its DNS challenge was found) and issues its
    /// organization certificate, signed by the root.
    pub fn verify_org(
        &self,
        domain: &str,
        now_ms: u64,
    ) -> Result<SignedCertificate, RegistryError> {
        let mut org = self.org_or_not_found(domain)?;
        let cert = self.new_cert(
            CertKind::Organization,
            *org.key.as_bytes(),
            domain,
            Tier::Organization,
            self.inner.settings.org_cert_validity,
            now_ms,
        )?;
        self.log_append_leaf(&Credentials::log_leaf(&CertChain(vec![cert.clone()]))?)?;
        org.verified = true;
        org.certificate = Some(hex::encode(cert.to_bytes()?));
        self.inner.store.put_org(&org)?;
        info!(target: "agentmesh::registry", domain, "organization verified");
        Ok(cert)
    }

    pub(super) fn org_agent(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        agent: Amid,
        certificate: String,
        now_ms: u64,
    ) -> Result<OrgAgentFiled, RegistryError> {
        let org = self
            .inner
            .store
            .org_by_key(signer)?
            .ok_or_else(|| RegistryError::Forbidden("the signer is no organization".into()))?;
        let org_cert_hex = org
            .certificate
            .clone()
            .filter(|_| org.verified)
            .ok_or_else(|| RegistryError::Forbidden("organization not verified".into()))?;
        let old = self.live_agent(&agent)?;
        let bytes = hex::decode(&certificate)
            .map_err(|_| RegistryError::Invalid("certificate must be hex".into()))?;
        let agent_cert = SignedCertificate::from_bytes(&bytes)?;
        let org_bytes = hex::decode(org_cert_hex).map_err(|e| StoreError::Corrupt {
            tree: "orgs",
            message: e.to_string(),
        })?;
        let org_cert = SignedCertificate::from_bytes(&org_bytes)?;
        let chain = CertChain(vec![agent_cert, org_cert]);
        let tier = chain.verify(&agent, &self.root_key(), now_ms, |r| match r {
            // Fails closed: a key whose status cannot be read counts as
            // revoked.
            Revocable::Key(k) => self.is_revoked_key(k).unwrap_or(true),
            Revocable::Serial(_) => false,
        })?;
        let mut rec = old.clone();
        rec.tier = tier;
        rec.org = Some(org.domain.clone());
        rec.certificate = Some(hex::encode(chain.to_bytes()?));
        self.mark_seen(req, now_ms)?;
        self.put_agent(&rec, Some(&old))?;
        let log_index = self.log_append_leaf(&Credentials::log_leaf(&chain)?)?;
        Ok(OrgAgentFiled {
            agent,
            org: org.domain,
            tier,
            log_index,
        })
    }

    /// The organization registered for `domain` and its agents.
    pub fn org_info(&self, domain: &str) -> Result<OrgInfo, RegistryError> {
        let org = self.org_or_not_found(domain)?;
        let mut agents = Vec::new();
        for a in self.inner.store.all_agents()? {
            if a.org.as_deref() == Some(domain) {
                agents.push(OrgAgent {
                    amid: a.amid,
                    display_name: a.display_name,
                    revoked: a.revoked,
                });
            }
        }
        Ok(OrgInfo {
            domain: org.domain,
            name: org.name,
            key: org.key,
            verified: org.verified,
            certificate: org.certificate,
            agents,
        })
    }

    /// What `amid`'s KNOCKs should show: its certificate chain (`chain`, or
    /// the stored one), the chain's inclusion proof against the current
    /// signed head, and a reputation attestation signed by the root, valid
    /// for [`super::RegistrySettings::attestation_validity`].
    pub fn credentials_for(
        &self,
        amid: &Amid,
        chain: Option<CertChain>,
        now_ms: u64,
    ) -> Result<Credentials, RegistryError> {
        let agent = self.live_agent(amid)?;
        let chain = match chain {
            Some(c) => Some(c),
            None => match &agent.certificate {
                Some(h) => {
                    let bytes = hex::decode(h).map_err(|e| StoreError::Corrupt {
                        tree: "agents",
                        message: e.to_string(),
                    })?;
                    Some(CertChain::from_bytes(&bytes)?)
                }
                None => None,
            },
        };
        let inclusion = match &chain {
            Some(c) => self.inclusion_of(c, now_ms)?,
            None => None,
        };
        let score = self.score(amid, now_ms)?.score;
        let validity = self.inner.settings.attestation_validity.as_millis() as u64;
        let reputation = ReputationAttestation {
            amid: *amid,
            score: Reputation::from_f64(score),
            expires_ms: now_ms.saturating_add(validity),
        }
        .sign(self.root());
        Ok(Credentials {
            chain,
            inclusion,
            reputation: Some(reputation),
        })
    }

    /// [`Registry::credentials_for`] as the API returns it: the tier, the
    /// proof and the CBOR credentials (hex) a node loads.
    pub fn credentials_view(
        &self,
        amid: &Amid,
        now_ms: u64,
    ) -> Result<CredentialsView, RegistryError> {
        let tier = self.live_agent(amid)?.tier;
        let creds = self.credentials_for(amid, None, now_ms)?;
        Ok(CredentialsView {
            amid: *amid,
            tier,
            certificate: creds
                .chain
                .as_ref()
                .map(|c| c.to_bytes().map(hex::encode))
                .transpose()?,
            inclusion: creds.inclusion.clone(),
            credentials: hex::encode(creds.to_bytes()?),
        })
    }
}
