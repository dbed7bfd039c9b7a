//! Every way the gateway ends a websocket, as a code and a reason, in one place. Clients
//! act on the code (docs/protocol.md, "Close codes", which a test keeps in step with
//! [`Close::ALL`]); the reason is for people reading logs and devtools.

/// A close frame's code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The close code (RFC 6455 section 7.4; 4000–4999 are ours).
    pub code: u16,
    /// A short reason; close frames carry at most 123 bytes of it.
    pub reason: &'static str,
}

impl Close {
    /// The client closed, or reading from its socket failed.
    pub const NORMAL: Close = Close::new(1000, "");
    /// The gateway is shutting down; reconnect elsewhere and resume.
    pub const RESTART: Close = Close::new(1012, "service restart");
    /// The client kept sending after `rate_limited` refusals.
    pub const FLOODING: Close = Close::new(1008, "flooding: too many messages");
    /// The client's queue overflowed; it may reconnect and resume.
    pub const TOO_SLOW: Close = Close::new(4008, "too slow: reconnect and resume with since");
    /// The client answered no ping within `PING_TIMEOUT_MS`.
    pub const PING_TIMEOUT: Close =
        Close::new(4009, "ping timeout: reconnect and resume with since");

    /// Token mode: the first message was not `auth`, or no token came in time.
    pub const AUTH_REQUIRED: Close = Close::new(
        4001,
        "authentication required: send {\"type\":\"auth\",\"token\":...} first",
    );
    /// The token is not a well-formed JWT (`alg: none` included).
    pub const TOKEN_MALFORMED: Close = Close::new(4001, "invalid token: not a well-formed JWT");
    /// The token is signed with an algorithm this gateway does not accept.
    pub const TOKEN_ALGORITHM: Close = Close::new(4001, "invalid token: wrong algorithm");
    /// The token's signature does not verify.
    pub const TOKEN_SIGNATURE: Close = Close::new(4001, "invalid token: bad signature");
    /// The token is for another audience (or has one when none is configured).
    pub const TOKEN_AUDIENCE: Close = Close::new(4001, "invalid token: wrong audience");
    /// The token is from another issuer.
    pub const TOKEN_ISSUER: Close = Close::new(4001, "invalid token: wrong issuer");
    /// The token's claims are invalid (no `sub` or `exp`, a bad `name`).
    pub const TOKEN_CLAIMS: Close = Close::new(4001, "invalid token: bad claims");
    /// A fresh token names another user than the connection speaks as.
    pub const OTHER_USER: Close = Close::new(4001, "invalid token: it names another user");
    /// The token expired (at `exp`, or `exp` plus `AUTH_GRACE_MS` on an open connection).
    pub const TOKEN_EXPIRED: Close =
        Close::new(4002, "token expired: reconnect with a fresh token");

    /// The closes with a fixed reason, in the order docs/protocol.md lists them. Protocol
    /// errors (1002, 1007, 1009) carry what was wrong and come from
    /// [`FrameError::close`](crate::ws::frame::FrameError::close).
    pub const ALL: [Close; 14] = [
        Close::RESTART,
        Close::FLOODING,
        Close::PING_TIMEOUT,
        Close::TOO_SLOW,
        Close::NORMAL,
        Close::AUTH_REQUIRED,
        Close::TOKEN_MALFORMED,
        Close::TOKEN_ALGORITHM,
        Close::TOKEN_SIGNATURE,
        Close::TOKEN_AUDIENCE,
        Close::TOKEN_ISSUER,
        Close::TOKEN_CLAIMS,
        Close::OTHER_USER,
        Close::TOKEN_EXPIRED,
    ];

    /// A close with this code and reason.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// RFC 6455 close codes for a client that broke the websocket protocol.
pub mod rfc6455 {
    /// An unmasked frame, reserved bits, an unknown opcode, a bad control frame.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message or close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message above the hard frame cap.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the docs' "Close codes" table: (code, reason as written).
    fn documented() -> Vec<(String, String)> {
        let docs = include_str!("../../docs/protocol.md");
        let section = docs
            .split("\n## Close codes\n")
            .nth(1)
            .expect("docs/protocol.md has a \"Close codes\" section");
        let section = section.split("\n## ").next().unwrap_or_default();
        section
            .lines()
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|row| {
                let mut cells = row.split(" | ");
                Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
            })
            .filter(|(code, _)| code.chars().all(|c| c.is_ascii_digit()))
            .collect()
    }

    #[test]
    fn the_protocol_docs_list_every_close_with_its_reason() {
        let rows = documented();
        for close in Close::ALL {
            let reason = if close.reason.is_empty() {
                "empty".to_owned()
            } else {
                format!("`{}`", close.reason)
            };
            assert!(
                rows.contains(&(close.code.to_string(), reason.clone())),
                "docs/protocol.md lists {} with reason {reason}",
                close.code
            );
        }
        for code in [
            rfc6455::PROTOCOL_ERROR,
            rfc6455::INVALID_PAYLOAD,
            rfc6455::MESSAGE_TOO_BIG,
        ] {
            assert!(
                rows.iter().any(|(c, _)| *c == code.to_string()),
                "docs/protocol.md lists {code}"
            );
        }
    }

    #[test]
    fn every_reason_fits_in_a_close_frame() {
        for close in Close::ALL {
            assert!(close.reason.len() <= 123, "{close:?}");
        }
    }
}
