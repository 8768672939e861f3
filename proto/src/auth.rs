//! Tokens: `authorization: Bearer <JWT>`, HS256, audience `ixn`, with `exp`. A `kid` header selects
//! among the configured secrets, so two can be valid during a rotation. Expiry is checked against the
//! caller's clock (an injected one in tests), not the library's.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The audience every token must carry.
pub const AUDIENCE: &str = "ixn";
/// The tenant wildcard, allowed only for role `service`.
pub const ANY_TENANT: &str = "*";

/// What a caller is; the contract's authorization table is written per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    MediaServer,
    Agent,
    Router,
    Reporter,
    Service,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::MediaServer => "media_server",
            Role::Agent => "agent",
            Role::Router => "router",
            Role::Reporter => "reporter",
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "media_server" => Role::MediaServer,
            "agent" => Role::Agent,
            "router" => Role::Router,
            "reporter" => Role::Reporter,
            "service" => Role::Service,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// The claims of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub role: Role,
    /// Required for role `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

impl Claims {
    /// Claims for `role` in `tenant`, valid from `now` for `ttl_secs`.
    pub fn new(role: Role, sub: &str, tenant: &str, now: i64, ttl_secs: i64) -> Claims {
        Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_owned(),
            role,
            agent_id: None,
            aud: AUDIENCE.to_owned(),
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
        }
    }

    pub fn with_agent_id(mut self, agent_id: &str) -> Claims {
        self.agent_id = Some(agent_id.to_owned());
        self
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is missing, malformed, wrongly signed or not for this audience")]
    Invalid,
    #[error("the token has expired or is not valid yet")]
    Expired,
}

/// One signing secret, optionally named by a `kid`.
#[derive(Clone)]
pub struct Secret {
    pub kid: Option<String>,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself.
        f.debug_struct("Secret")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Signs a token with `secret` (its `kid`, if any, goes into the header).
pub fn mint(secret: &Secret, claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = secret.kid.clone();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret.bytes))
        .expect("HS256 signing of serialisable claims cannot fail")
}

/// Verifies tokens against the configured secrets.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
    /// Tokens whose signature and claims checked out, with their claims: a client sends the same
    /// token on every call, and checking it again costs more than the rest of a small call. Only
    /// the time is checked on every call. Bounded (S3-FIFO eviction), and only short tokens go in.
    /// Shared (`Arc`): each call's identity points at them instead of copying their strings.
    verified: std::sync::Arc<quick_cache::sync::Cache<String, std::sync::Arc<Claims>>>,
}

/// How many verified tokens are remembered.
const VERIFIED_TOKENS: usize = 16_384;
/// The longest token remembered (a JWT of this service's claims is about 300 bytes), which bounds
/// the cache's memory.
const MAX_REMEMBERED_TOKEN: usize = 1_024;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|(kid, _)| kid).collect();
        f.debug_struct("Verifier").field("kids", &kids).finish()
    }
}

impl Verifier {
    pub fn new(secrets: &[Secret]) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        // Time is checked in `verify` against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Verifier {
            keys: secrets
                .iter()
                .map(|s| (s.kid.clone(), DecodingKey::from_secret(&s.bytes)))
                .collect(),
            validation,
            verified: std::sync::Arc::new(quick_cache::sync::Cache::new(VERIFIED_TOKENS)),
        }
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<std::sync::Arc<Claims>, TokenError> {
        let claims = match self.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims = std::sync::Arc::new(self.check(token)?);
                if token.len() <= MAX_REMEMBERED_TOKEN {
                    self.verified.insert(token.to_owned(), claims.clone());
                }
                claims
            }
        };
        if now >= claims.exp || claims.nbf.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Checks everything about `token` but the time: the signature and the claims.
    fn check(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        let candidates = self
            .keys
            .iter()
            .filter(|(kid, _)| header.kid.is_none() || kid.as_deref() == header.kid.as_deref());
        let mut claims = None;
        for (_, key) in candidates {
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                claims = Some(data.claims);
                break;
            }
        }
        let claims = claims.ok_or(TokenError::Invalid)?;
        if claims.sub.is_empty() || claims.tenant.is_empty() {
            return Err(TokenError::Invalid);
        }
        if claims.tenant == ANY_TENANT && claims.role != Role::Service {
            return Err(TokenError::Invalid);
        }
        if claims.role == Role::Agent && claims.agent_id.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(kid: Option<&str>, bytes: &[u8]) -> Secret {
        Secret {
            kid: kid.map(str::to_owned),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let s = secret(None, b"s3cret");
        let claims = Claims::new(Role::Agent, "u1", "t1", 1_000, 60).with_agent_id("a1");
        let token = mint(&s, &claims);
        let verifier = Verifier::new(&[s]);
        assert_eq!(
            verifier.verify(&token, 1_010),
            Ok(std::sync::Arc::new(claims))
        );
        assert_eq!(verifier.verify(&token, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn not_before_is_honoured() {
        let s = secret(None, b"s3cret");
        let mut claims = Claims::new(Role::Router, "r1", "t1", 1_000, 60);
        claims.nbf = Some(1_030);
        let verifier = Verifier::new(std::slice::from_ref(&s));
        let token = mint(&s, &claims);
        assert_eq!(verifier.verify(&token, 1_010), Err(TokenError::Expired));
        // The remembered token is still checked against the time of each call.
        assert_eq!(
            verifier.verify(&token, 1_030),
            Ok(std::sync::Arc::new(claims.clone()))
        );
        assert_eq!(verifier.verify(&token, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn a_remembered_token_vouches_for_no_other() {
        let s = secret(None, b"s3cret");
        let claims = Claims::new(Role::Agent, "u1", "t1", 1_000, 60).with_agent_id("a1");
        let token = mint(&s, &claims);
        let verifier = Verifier::new(std::slice::from_ref(&s));
        assert_eq!(
            verifier.verify(&token, 1_010),
            Ok(std::sync::Arc::new(claims))
        );
        // The same claims under a broken signature, and the token with a byte more.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert_eq!(verifier.verify(&forged, 1_010), Err(TokenError::Invalid));
        assert_eq!(
            verifier.verify(&format!("{token}x"), 1_010),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn rotation_accepts_both_kids_and_refuses_others() {
        let old = secret(Some("old"), b"one");
        let new = secret(Some("new"), b"two");
        let verifier = Verifier::new(&[old.clone(), new.clone()]);
        let claims = Claims::new(Role::Admin, "ops", "t1", 0, 60);
        assert!(verifier.verify(&mint(&old, &claims), 1).is_ok());
        assert!(verifier.verify(&mint(&new, &claims), 1).is_ok());
        let stranger = secret(Some("new"), b"three");
        assert_eq!(
            verifier.verify(&mint(&stranger, &claims), 1),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn wrong_audience_wildcard_tenant_and_alg_none_are_invalid() {
        let s = secret(None, b"s3cret");
        let verifier = Verifier::new(std::slice::from_ref(&s));
        let mut claims = Claims::new(Role::Admin, "ops", "t1", 0, 60);
        claims.aud = "other".into();
        assert_eq!(
            verifier.verify(&mint(&s, &claims), 1),
            Err(TokenError::Invalid)
        );
        let wildcard = Claims::new(Role::Admin, "ops", ANY_TENANT, 0, 60);
        assert_eq!(
            verifier.verify(&mint(&s, &wildcard), 1),
            Err(TokenError::Invalid)
        );
        // {"alg":"none","typ":"JWT"} . {claims} . (no signature)
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJvcHMiLCJ0ZW5hbnQiOiJ0MSIsInJvbGUiOiJhZG1pbiIsImF1ZCI6Iml4biIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(verifier.verify(unsigned, 1), Err(TokenError::Invalid));
        assert_eq!(verifier.verify("garbage", 1), Err(TokenError::Invalid));
    }
}

/// The metadata key a `*`-tenant service names the tenant it acts in with.
pub const TENANT_HEADER: &str = "ixn-tenant";

/// A verified caller, as the interceptor leaves it in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub claims: std::sync::Arc<Claims>,
    /// The tenant the call acts in; `None` for a `*` service that named none (it sees all tenants).
    pub tenant: Option<String>,
}

impl Identity {
    pub fn role(&self) -> Role {
        self.claims.role
    }

    /// Refuses with `ROLE_DENIED` unless the role is one of `allowed`.
    pub fn require(&self, allowed: &[Role]) -> Result<(), crate::error::Failure> {
        if allowed.contains(&self.claims.role) {
            Ok(())
        } else {
            Err(crate::error::Failure::new(
                crate::error::Reason::RoleDenied,
                format!(
                    "role {} may not call this method",
                    self.claims.role.as_str()
                ),
            )
            .with_meta("role", self.claims.role.as_str()))
        }
    }

    /// The tenant, which every call but a `*` service's Subscribe must have.
    pub fn tenant(&self) -> Result<&str, crate::error::Failure> {
        self.tenant.as_deref().ok_or_else(|| {
            crate::error::Failure::invalid_argument(
                TENANT_HEADER,
                "a service acting for every tenant must name one for this call",
            )
        })
    }
}

/// A tonic interceptor that verifies `authorization: Bearer <JWT>` and leaves the [`Identity`] in
/// the request's extensions. Health and reflection are not behind it (probes carry no token).
#[derive(Clone)]
pub struct Authenticator {
    verifier: std::sync::Arc<Verifier>,
    /// The service's (injectable) clock: token expiry and rate limits are checked on it.
    clock: crate::clock::Clock,
    /// The calls each caller may make, if limited.
    limiter: Option<std::sync::Arc<Limiter>>,
}

/// How many calls one caller (a token's tenant, role and subject) may make: a sustained rate and a
/// burst above it. Health, reflection and the `service` role (session-service, calling for every
/// agent) are not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: std::num::NonZeroU32,
    pub burst: std::num::NonZeroU32,
}

type Limiter = governor::RateLimiter<
    String,
    governor::state::keyed::DashMapStateStore<String>,
    crate::clock::Clock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

/// How often the limiter forgets callers whose allowance is full again.
const FORGET_IDLE_CALLERS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(verifier: Verifier, clock: crate::clock::Clock) -> Authenticator {
        Authenticator {
            verifier: std::sync::Arc::new(verifier),
            clock,
            limiter: None,
        }
    }

    /// Limits each caller's calls on the service's clock; a caller over its limit is refused with
    /// `RATE_LIMITED` before anything else is done. Call from within the runtime.
    pub fn limiting(mut self, limit: Option<RateLimit>) -> Authenticator {
        let Some(limit) = limit else { return self };
        let quota = governor::Quota::per_second(limit.per_second).allow_burst(limit.burst);
        let limiter = std::sync::Arc::new(Limiter::dashmap_with_clock(quota, self.clock.clone()));
        let weak = std::sync::Arc::downgrade(&limiter);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FORGET_IDLE_CALLERS_EVERY).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        self.limiter = Some(limiter);
        self
    }

    /// Counts one call of `claims`' caller against its limit.
    fn admit(&self, claims: &Claims) -> Result<(), crate::error::Failure> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // session-service's own identity carries every agent's calls to the switch (and its
        // relay): one bucket for all of them would refuse a logout step for others' traffic.
        if claims.role == Role::Service {
            return Ok(());
        }
        let key = format!(
            "{}\0{}\0{}",
            claims.tenant,
            claims.role.as_str(),
            claims.sub
        );
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
            crate::error::Failure::new(
                crate::error::Reason::RateLimited,
                "this caller is over its rate limit; retry later",
            )
            .with_meta("retry_after_ms", wait.as_millis().max(1))
        })
    }

    /// Verifies the call's token.
    pub fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Identity, crate::error::Failure> {
        use crate::error::{Failure, Reason};
        let invalid = |why: &str| Failure::new(Reason::TokenInvalid, why);
        let header = metadata
            .get("authorization")
            .ok_or_else(|| invalid("the authorization metadata is missing"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| invalid("authorization must be `Bearer <token>`"))?;
        let claims = self
            .verifier
            .verify(token.trim(), self.clock.now_secs())
            .map_err(|e| match e {
                TokenError::Invalid => invalid("the token is not valid"),
                TokenError::Expired => Failure::new(
                    Reason::TokenExpired,
                    "the token has expired or is not valid yet",
                ),
            })?;
        self.admit(&claims)?;
        let tenant = if claims.tenant == ANY_TENANT {
            match metadata.get(TENANT_HEADER).map(|v| v.to_str()) {
                Some(Ok(t)) if !t.is_empty() && t != ANY_TENANT => Some(t.to_owned()),
                Some(_) => {
                    return Err(Failure::invalid_argument(
                        TENANT_HEADER,
                        "is not a tenant name",
                    ));
                }
                None => None,
            }
        } else {
            Some(claims.tenant.clone())
        };
        Ok(Identity { claims, tenant })
    }

    /// The seconds-since-epoch clock this authenticator checks expiry with.
    pub fn now(&self) -> i64 {
        self.clock.now_secs()
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let identity = self.check(request.metadata())?;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

/// The identity the interceptor verified.
pub fn identity<T>(request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| {
            crate::error::Failure::new(
                crate::error::Reason::TokenInvalid,
                "the call carries no verified token",
            )
            .into_status()
        })
}

/// The environment variable holding the signing secret.
pub const SECRET_ENV: &str = "IXN_JWT_SECRET";
/// The file a secret is generated into, in the data directory, when none is configured.
pub const GENERATED_SECRET_FILE: &str = "jwt-secret";

/// Where the signing secret came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    File(std::path::PathBuf),
    /// Generated on first start into this file.
    Generated(std::path::PathBuf),
}

/// Finds the signing secret: the environment value if set, else the named file, else the file in the
/// data directory, generated on first start. Several secrets (a rotation) are written one per line as
/// `kid=secret`; the first one signs.
pub fn resolve_secrets(
    environment: Option<String>,
    file: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> std::io::Result<(Vec<Secret>, SecretSource)> {
    if let Some(value) = environment.filter(|v| !v.trim().is_empty()) {
        return Ok((parse_secrets(&value)?, SecretSource::Environment));
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)?;
        return Ok((parse_secrets(&text)?, SecretSource::File(file.to_owned())));
    }
    let path = data_dir.join(GENERATED_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((parse_secrets(&text)?, SecretSource::File(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            write_private(&path, &secret)?;
            Ok((parse_secrets(&secret)?, SecretSource::Generated(path)))
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Parses `secret`, or lines of `kid=secret`.
pub fn parse_secrets(text: &str) -> std::io::Result<Vec<Secret>> {
    let secrets: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| match line.split_once('=') {
            Some((kid, secret)) if !kid.is_empty() && !kid.contains(char::is_whitespace) => {
                Secret {
                    kid: Some(kid.to_owned()),
                    bytes: secret.as_bytes().to_vec(),
                }
            }
            _ => Secret {
                kid: None,
                bytes: line.as_bytes().to_vec(),
            },
        })
        .collect();
    if secrets.is_empty() || secrets.iter().any(|s| s.bytes.len() < 16) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a signing secret must be at least 16 bytes",
        ));
    }
    Ok(secrets)
}
