//! Who is speaking: the identity settings every service shares (`AUTH_MODE`, the key, the
//! expected audience and issuer) and the verification of a token into an [`Identity`].
//!
//! Tokens are JWTs checked by the `jsonwebtoken` crate, never by hand: HS256 with
//! `AUTH_SECRET`, or EdDSA / RS256 with the PEM public key in `AUTH_PUBLIC_KEY` (an identity
//! provider or an application backend signs with the private half and shares nothing
//! secret). Exactly one algorithm is accepted, the one the key is for, so `alg: none` and
//! algorithm confusion fail like a bad signature. Claims: `sub` (the stable user id, which
//! becomes every event's `user`), `name` (the display name, validated like a chosen name),
//! `exp` (required), `iat`, and `aud`/`iss` when configured; `admin: true` lets the holder
//! read every room through the archiver's API. Every refusal is counted in
//! `chat_auth_refused_total{reason}`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::normalize::{self, Limits};

/// Close code (websocket) for a missing, malformed, forged or wrongly signed token.
pub const CLOSE_INVALID: u16 = 4001;
/// Close code for an expired token.
pub const CLOSE_EXPIRED: u16 = 4002;
/// Shortest `AUTH_SECRET` accepted, in bytes: HS256 wants a key at least as long as its hash.
pub const MIN_SECRET: usize = 32;

/// How a service learns who is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// Names are self-chosen; every event marks its speaker as a guest.
    #[default]
    Open,
    /// Every connection (and API request) presents a signed token first.
    Token,
}

/// The identity settings, the same on the gateway and the archiver.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// `open`: self-chosen names, marked as guests. `token`: a signed JWT is required.
    #[arg(long, env = "AUTH_MODE", value_enum, default_value_t = AuthMode::Open, global = true)]
    pub auth_mode: AuthMode,
    /// HS256 secret tokens are signed with (at least 32 bytes). Also what `gateway token`
    /// signs with.
    #[arg(long, env = "AUTH_SECRET", hide_env_values = true, global = true)]
    pub auth_secret: Option<String>,
    /// Path of a PEM public key (Ed25519 for EdDSA, or RSA for RS256) that verifies tokens
    /// signed elsewhere. Set this or `AUTH_SECRET`, not both.
    #[arg(long, env = "AUTH_PUBLIC_KEY", global = true)]
    pub auth_public_key: Option<PathBuf>,
    /// The `aud` claim tokens must carry; unset: tokens must carry none.
    #[arg(long, env = "AUTH_AUDIENCE", global = true)]
    pub auth_audience: Option<String>,
    /// The `iss` claim tokens must carry; unset: not checked.
    #[arg(long, env = "AUTH_ISSUER", global = true)]
    pub auth_issuer: Option<String>,
}

impl AuthArgs {
    /// The verifier for token mode (`None` in open mode), or why the settings cannot work.
    /// `max_name` bounds the display names taken from tokens.
    pub fn verifier(&self, max_name: usize) -> anyhow::Result<Option<Verifier>> {
        match self.auth_mode {
            AuthMode::Open => Ok(None),
            AuthMode::Token => Verifier::new(self, max_name).map(Some),
        }
    }
}

/// Who a valid token says is speaking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The stable user id (`sub`), the `user` of every event this identity makes.
    pub user: String,
    /// The display name (`name`, or `sub` when the token has none), normalised.
    pub name: String,
    /// When the token stops being valid (`exp`).
    pub expires_at: DateTime<Utc>,
    /// Whether the token carries `admin: true`: may read every room.
    pub admin: bool,
}

/// A token's claims, as minted and as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The stable user id.
    pub sub: String,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The audience, when minted for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The issuer, when minted by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whether the holder may read every room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Why a token was refused. [`Refused::close_code`] is what a websocket closes with,
/// [`Refused::reason`] the metric's label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no token was presented")]
    Missing,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with another algorithm than this service accepts")]
    Algorithm,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token is from another issuer")]
    Issuer,
    #[error("the token's claims are invalid: {0}")]
    Claims(String),
}

impl Refused {
    /// The websocket close code: 4002 for an expired token, 4001 for every other refusal.
    pub fn close_code(&self) -> u16 {
        match self {
            Refused::Expired => CLOSE_EXPIRED,
            _ => CLOSE_INVALID,
        }
    }

    /// A short label for `chat_auth_refused_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Malformed(_) => "malformed",
            Refused::Algorithm => "algorithm",
            Refused::Signature => "signature",
            Refused::Expired => "expired",
            Refused::Audience => "audience",
            Refused::Issuer => "issuer",
            Refused::Claims(_) => "claims",
        }
    }

    /// Counts the refusal in `chat_auth_refused_total{reason}`.
    pub fn count(&self) {
        metrics::counter!("chat_auth_refused_total", "reason" => self.reason()).increment(1);
    }
}

/// Checks tokens against the configured key; cheap to share behind an `Arc`.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    limits: Limits,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for the configured key, or an error naming the setting to fix.
    pub fn new(args: &AuthArgs, max_name: usize) -> anyhow::Result<Self> {
        let (key, algorithm) = match (&args.auth_secret, &args.auth_public_key) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set AUTH_SECRET (HS256) or AUTH_PUBLIC_KEY (EdDSA, RS256), not both")
            }
            (None, None) => anyhow::bail!(
                "AUTH_MODE=token needs AUTH_SECRET (HS256) or AUTH_PUBLIC_KEY (a PEM public key \
                 for EdDSA or RS256)"
            ),
            (Some(secret), None) => (
                DecodingKey::from_secret(secret_bytes(secret)?),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).with_context(|| {
                    format!("Failed to read AUTH_PUBLIC_KEY {}", path.display())
                })?;
                public_key(&pem).with_context(|| {
                    format!(
                        "AUTH_PUBLIC_KEY {} is neither an Ed25519 nor an RSA public key in PEM",
                        path.display()
                    )
                })?
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // The gateway gives its own grace after `exp` on open connections; a token that
        // has expired is refused from its first second.
        validation.leeway = 0;
        match &args.auth_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &args.auth_issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self {
            key,
            validation,
            limits: Limits {
                max_name,
                ..Limits::default()
            },
        })
    }

    /// Checks a token and returns who it names; counts every refusal.
    pub fn verify(&self, token: &str) -> Result<Identity, Refused> {
        self.check(token).inspect_err(Refused::count)
    }

    fn check(&self, token: &str) -> Result<Identity, Refused> {
        if token.is_empty() {
            return Err(Refused::Missing);
        }
        // An unset audience must not let a token minted for another service in: the crate
        // only checks `aud` when one is expected, so its absence is checked here.
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| refusal(e.into_kind()))?;
        let raw = data.claims;
        if !self.validation.validate_aud && raw.aud.is_some() {
            return Err(Refused::Audience);
        }
        let claims = raw.claims;
        let limits = Limits::DECODE;
        if !normalize::is_normal_name(&claims.sub, &limits).unwrap_or(false)
            || claims.sub.starts_with('~')
        {
            return Err(Refused::Claims(
                "sub must be 1 to 128 characters without control characters, not starting \
                 with '~'"
                    .into(),
            ));
        }
        let name = match &claims.name {
            Some(name) => normalize::name(name, &self.limits)
                .map_err(|e| Refused::Claims(format!("name: {e}")))?,
            None => claims.sub.clone(),
        };
        let expires_at = DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| Refused::Claims("exp is out of range".into()))?;
        Ok(Identity {
            user: claims.sub,
            name,
            expires_at,
            admin: claims.admin,
        })
    }
}

/// The claims as read, with `aud` kept in whatever shape it came (string or list).
#[derive(Deserialize)]
struct RawClaims {
    #[serde(flatten)]
    claims: ReadClaims,
    #[serde(default)]
    aud: Option<serde_json::Value>,
}

/// [`Claims`] without `aud`, which [`RawClaims`] reads in any shape.
#[derive(Deserialize)]
struct ReadClaims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    exp: i64,
    #[serde(default)]
    admin: bool,
}

fn refusal(kind: ErrorKind) -> Refused {
    match kind {
        ErrorKind::ExpiredSignature => Refused::Expired,
        ErrorKind::InvalidSignature => Refused::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Refused::Algorithm,
        ErrorKind::InvalidAudience => Refused::Audience,
        ErrorKind::InvalidIssuer => Refused::Issuer,
        ErrorKind::MissingRequiredClaim(claim) => {
            Refused::Claims(format!("the {claim} claim is required"))
        }
        ErrorKind::ImmatureSignature => Refused::Claims("not valid yet (nbf)".into()),
        // A header naming `none` or an unknown algorithm does not parse at all.
        ErrorKind::Json(err) if err.to_string().contains("variant") => Refused::Algorithm,
        other => Refused::Malformed(format!("{other:?}")),
    }
}

fn secret_bytes(secret: &str) -> anyhow::Result<&[u8]> {
    anyhow::ensure!(
        secret.len() >= MIN_SECRET,
        "AUTH_SECRET must be at least {MIN_SECRET} bytes (e.g. `openssl rand -hex 32`)"
    );
    Ok(secret.as_bytes())
}

fn public_key(pem: &[u8]) -> anyhow::Result<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    let key = DecodingKey::from_rsa_pem(pem)?;
    Ok((key, Algorithm::RS256))
}

/// Signs `claims` with HS256: for `gateway token`, tests and local use. Production tokens
/// come from the application's backend or identity provider (see examples/).
pub fn mint(secret: &str, claims: &Claims) -> anyhow::Result<String> {
    let key = EncodingKey::from_secret(secret_bytes(secret)?);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .context("Failed to sign the token")
}

/// Claims for `sub` valid for `ttl` from now.
pub fn claims_for(sub: &str, name: Option<&str>, ttl: Duration) -> Claims {
    let now = Utc::now().timestamp();
    Claims {
        sub: sub.to_owned(),
        name: name.map(str::to_owned),
        exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        iat: Some(now),
        aud: None,
        iss: None,
        admin: false,
    }
}

/// Parses a duration like `90s`, `15m`, `1h` or `7d` (a bare number is seconds).
pub fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{raw:?} is not a duration like 90s, 15m, 1h or 7d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The distinct reasons a refusal is counted under, for dashboards and tests.
pub fn refusal_reasons() -> HashSet<&'static str> {
    [
        Refused::Missing,
        Refused::Malformed(String::new()),
        Refused::Algorithm,
        Refused::Signature,
        Refused::Expired,
        Refused::Audience,
        Refused::Issuer,
        Refused::Claims(String::new()),
    ]
    .iter()
    .map(Refused::reason)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const ED_PRIVATE: &str = include_str!("../tests/keys/ed25519-private.pem");
    const ED_PUBLIC: &str = "tests/keys/ed25519-public.pem";
    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa-private.pem");
    const RSA_PUBLIC: &str = "tests/keys/rsa-public.pem";

    fn hs256() -> Verifier {
        let args = AuthArgs {
            auth_mode: AuthMode::Token,
            auth_secret: Some(SECRET.into()),
            ..AuthArgs::default()
        };
        Verifier::new(&args, 32).unwrap()
    }

    fn with_key(path: &str) -> Verifier {
        let args = AuthArgs {
            auth_mode: AuthMode::Token,
            auth_public_key: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)),
            ..AuthArgs::default()
        };
        Verifier::new(&args, 32).unwrap()
    }

    fn alice() -> Claims {
        claims_for("alice", Some("Alice"), Duration::from_secs(3600))
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_valid_token_names_its_subject() {
        let identity = hs256().verify(&mint(SECRET, &alice()).unwrap()).unwrap();
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.name, "Alice");
        assert!(!identity.admin);
        assert!(identity.expires_at > Utc::now());
    }

    #[test]
    fn eddsa_and_rs256_tokens_verify_with_their_public_key() {
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &alice(), &ed).unwrap();
        assert_eq!(with_key(ED_PUBLIC).verify(&token).unwrap().user, "alice");
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &alice(), &rsa).unwrap();
        assert_eq!(with_key(RSA_PUBLIC).verify(&token).unwrap().user, "alice");
        // The RSA-signed token against the Ed25519 key: wrong algorithm.
        assert_eq!(with_key(ED_PUBLIC).verify(&token), Err(Refused::Algorithm));
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(&serde_json::to_vec(&alice()).unwrap());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let refused = hs256().verify(&token).unwrap_err();
            assert_eq!(refused.close_code(), CLOSE_INVALID, "{refused:?}");
        }
    }

    #[test]
    fn a_token_signed_with_another_algorithm_is_refused() {
        // HS256 with the RSA public key as the secret: the classic confusion attack.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &alice(),
            &EncodingKey::from_secret(
                &std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(RSA_PUBLIC)).unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(with_key(RSA_PUBLIC).verify(&token), Err(Refused::Algorithm));
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &alice(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(hs256().verify(&hs384), Err(Refused::Algorithm));
    }

    #[test]
    fn a_forged_or_tampered_token_is_refused() {
        let other = mint("another secret of at least 32 bytes!", &alice()).unwrap();
        assert_eq!(hs256().verify(&other), Err(Refused::Signature));
        // Alice's signature on a body that says bob.
        let token = mint(SECRET, &alice()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut bob = alice();
        bob.sub = "bob".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&bob).unwrap()),
            parts[2]
        );
        assert_eq!(hs256().verify(&forged), Err(Refused::Signature));
        for garbage in ["", "x", "a.b.c", "not a token at all"] {
            let refused = hs256().verify(garbage).unwrap_err();
            assert_eq!(
                refused.close_code(),
                CLOSE_INVALID,
                "{garbage:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn an_expired_token_is_refused_with_its_own_code() {
        let mut claims = alice();
        claims.exp = Utc::now().timestamp() - 1;
        let refused = hs256().verify(&mint(SECRET, &claims).unwrap()).unwrap_err();
        assert_eq!(refused, Refused::Expired);
        assert_eq!(refused.close_code(), CLOSE_EXPIRED);
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let args = AuthArgs {
            auth_mode: AuthMode::Token,
            auth_secret: Some(SECRET.into()),
            auth_audience: Some("chat".into()),
            auth_issuer: Some("https://id.example".into()),
            ..AuthArgs::default()
        };
        let verifier = Verifier::new(&args, 32).unwrap();
        let mut claims = alice();
        claims.aud = Some("chat".into());
        claims.iss = Some("https://id.example".into());
        assert!(verifier.verify(&mint(SECRET, &claims).unwrap()).is_ok());
        claims.aud = Some("billing".into());
        assert_eq!(
            verifier.verify(&mint(SECRET, &claims).unwrap()),
            Err(Refused::Audience)
        );
        claims.aud = Some("chat".into());
        claims.iss = Some("https://evil.example".into());
        assert_eq!(
            verifier.verify(&mint(SECRET, &claims).unwrap()),
            Err(Refused::Issuer)
        );
        // Without a configured audience, a token minted for some audience is not for us.
        let mut for_billing = alice();
        for_billing.aud = Some("billing".into());
        assert_eq!(
            hs256().verify(&mint(SECRET, &for_billing).unwrap()),
            Err(Refused::Audience)
        );
    }

    #[test]
    fn bad_claims_are_refused() {
        let mut claims = alice();
        claims.name = Some("Al\u{202E}ice".into());
        assert!(matches!(
            hs256().verify(&mint(SECRET, &claims).unwrap()),
            Err(Refused::Claims(_))
        ));
        let mut claims = alice();
        claims.sub = "~alice".into();
        assert!(matches!(
            hs256().verify(&mint(SECRET, &claims).unwrap()),
            Err(Refused::Claims(_))
        ));
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice"}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            hs256().verify(&no_exp).unwrap_err().close_code(),
            CLOSE_INVALID
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let mut args = AuthArgs {
            auth_mode: AuthMode::Token,
            ..AuthArgs::default()
        };
        assert!(args.verifier(32).is_err(), "no key");
        args.auth_secret = Some("short".into());
        assert!(args.verifier(32).is_err(), "a short secret");
        args.auth_secret = Some(SECRET.into());
        args.auth_public_key = Some(ED_PUBLIC.into());
        assert!(args.verifier(32).is_err(), "both keys");
        args.auth_mode = AuthMode::Open;
        assert!(args.verifier(32).unwrap().is_none());
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "1w", "-1h", "0"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        assert_eq!(refusal_reasons().len(), 8);
    }
}
