//! Who is reading the archive, for the HTTP API (`Authorization: Bearer <token>`) and the
//! read commands (`--token`, `ARCHIVER_TOKEN`) alike: in open mode every caller is a guest,
//! who may read public rooms only; in token mode the caller is the verified token's
//! subject, and the token's `admin` claim reads every room. The rules themselves are
//! `chat_core::access`'s.

use chat_core::access::Reader;
use chat_core::auth::{Refused, Verifier};

/// A caller, as far as a valid token (or its absence in open mode) tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The verified user id; `None` for a guest (open mode).
    pub user: Option<String>,
    /// The token's `admin` claim.
    pub admin: bool,
}

impl Caller {
    /// A guest: public rooms only.
    pub const GUEST: Caller = Caller {
        user: None,
        admin: false,
    };

    /// The caller as the access rules see it.
    pub fn reader(&self) -> Reader<'_> {
        match &self.user {
            None => Reader::Guest,
            Some(id) => Reader::User {
                id,
                admin: self.admin,
            },
        }
    }

    /// The caller presenting `token` (`None` or empty: none presented). `verifier` is the
    /// token mode's; without one (open mode) every caller is a guest and a token is not
    /// looked at. Every refusal is counted in `chat_auth_refused_total`.
    pub fn identify(verifier: Option<&Verifier>, token: Option<&str>) -> Result<Self, Refused> {
        let Some(verifier) = verifier else {
            return Ok(Self::GUEST);
        };
        let identity = verifier.verify(token.map(str::trim).unwrap_or_default())?;
        Ok(Self {
            user: Some(identity.user),
            admin: identity.admin,
        })
    }
}
