//! `gateway token`: mints an HS256 token signed with `AUTH_SECRET`, for local use, tests
//! and scripts. Production tokens come from the application's backend or identity provider
//! (see examples/mint-token/); this command is the copy-paste way to try token mode.

use std::time::Duration;

use anyhow::Context;
use chat_core::auth::{self, AuthArgs, AuthMode, Verifier};

/// `gateway token --sub alice --name Alice --ttl 1h`
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway token",
    about = "Print a token (HS256, signed with AUTH_SECRET) that a gateway in AUTH_MODE=token accepts"
)]
pub struct TokenCommand {
    /// The user id (`sub`): every event of this user carries it as `user`.
    #[arg(long)]
    pub sub: String,
    /// The display name (`name`); default: the user id.
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token is valid: `90s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = auth::parse_ttl)]
    pub ttl: Duration,
    /// Let the holder read every room through the archiver's API (the `admin` claim).
    #[arg(long)]
    pub admin: bool,
    /// The secret to sign with (at least 32 bytes), as the gateways are configured.
    #[arg(long, env = "AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: String,
    /// The `aud` claim, when the services expect one.
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// The `iss` claim, when the services expect one.
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
}

impl TokenCommand {
    /// The signed token, checked the way a gateway with these settings checks it, so a
    /// token that would be refused (a bad name, a short secret) is never printed.
    pub fn mint(&self) -> anyhow::Result<String> {
        let mut claims = auth::claims_for(&self.sub, self.name.as_deref(), self.ttl);
        claims.admin = self.admin;
        claims.aud.clone_from(&self.auth_audience);
        claims.iss.clone_from(&self.auth_issuer);
        let token = auth::mint(&self.auth_secret, &claims)?;
        let settings = AuthArgs {
            auth_mode: AuthMode::Token,
            auth_secret: Some(self.auth_secret.clone()),
            auth_public_key: None,
            auth_audience: self.auth_audience.clone(),
            auth_issuer: self.auth_issuer.clone(),
        };
        Verifier::new(&settings, chat_core::normalize::Limits::DECODE.max_name)?
            .verify(&token)
            .context("the token would be refused")?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_minted_token_names_its_subject_and_a_bad_one_is_never_printed() {
        let secret = "0123456789abcdef0123456789abcdef";
        let command = TokenCommand::try_parse_from([
            "gateway token",
            "--sub",
            "alice",
            "--name",
            "Alice",
            "--ttl",
            "15m",
            "--auth-secret",
            secret,
        ])
        .unwrap();
        let token = command.mint().unwrap();
        let settings = AuthArgs {
            auth_mode: AuthMode::Token,
            auth_secret: Some(secret.into()),
            ..AuthArgs::default()
        };
        let identity = Verifier::new(&settings, 32)
            .unwrap()
            .verify(&token)
            .unwrap();
        assert_eq!(
            (identity.user.as_str(), identity.name.as_str()),
            ("alice", "Alice")
        );
        let left = identity.expires_at - chrono::Utc::now();
        assert!(left.num_seconds() > 800 && left.num_seconds() <= 900);
        let bad = TokenCommand {
            sub: "~alice".into(),
            ..command.clone()
        };
        assert!(bad.mint().is_err());
        let short = TokenCommand {
            auth_secret: "short".into(),
            ..command
        };
        assert!(short.mint().is_err());
    }
}
