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
}

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
        }
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
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
        if now >= claims.exp || claims.nbf.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::Expired);
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
        assert_eq!(verifier.verify(&token, 1_010), Ok(claims));
        assert_eq!(verifier.verify(&token, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn not_before_is_honoured() {
        let s = secret(None, b"s3cret");
        let mut claims = Claims::new(Role::Router, "r1", "t1", 1_000, 60);
        claims.nbf = Some(1_030);
        let verifier = Verifier::new(std::slice::from_ref(&s));
        assert_eq!(
            verifier.verify(&mint(&s, &claims), 1_010),
            Err(TokenError::Expired)
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
