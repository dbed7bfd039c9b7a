//! The websocket upgrade's `Origin` check, so that a page on another site cannot open a
//! chat connection in a visitor's browser on their behalf (cross-site websocket hijacking).
//! Browsers always send `Origin` on websocket upgrades; other clients usually do not and are
//! let through, as they cannot be tricked into acting for a user.

/// Which origins may open the websocket.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Extra allowed origins, normalised (`scheme://host[:port]`, lower case).
    allowed: Vec<String>,
    /// `*` was configured: any origin.
    any: bool,
}

impl OriginPolicy {
    /// A policy from the `ALLOWED_ORIGINS` entries.
    pub fn new(allowed: &[String]) -> Self {
        let any = allowed.iter().any(|o| o.trim() == "*");
        let allowed = allowed
            .iter()
            .map(|o| normalise(o))
            .filter(|o| !o.is_empty() && o != "*")
            .collect();
        Self { allowed, any }
    }

    /// Whether a request with this `Origin` and `Host` may upgrade.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let origin = normalise(origin);
        let Some(authority) = origin.split_once("://").map(|(_, rest)| rest) else {
            return false; // "null" (sandboxed pages, file://) and anything malformed
        };
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true; // same origin as the page the gateway served
        }
        let hostname = match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => authority,
        };
        if matches!(hostname, "localhost" | "127.0.0.1" | "[::1]") {
            return true;
        }
        self.allowed.contains(&origin)
    }
}

fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_own_origin_and_localhost_are_allowed_by_default() {
        let policy = OriginPolicy::new(&[]);
        assert!(policy.allows(None, Some("chat.example.com")));
        assert!(policy.allows(Some("https://chat.example.com"), Some("chat.example.com")));
        assert!(policy.allows(Some("http://localhost:8080"), Some("gateway:3000")));
        assert!(policy.allows(Some("http://127.0.0.1:3001"), Some("127.0.0.1:3002")));
        assert!(!policy.allows(Some("https://evil.example"), Some("chat.example.com")));
        assert!(!policy.allows(Some("null"), Some("chat.example.com")));
        assert!(!policy.allows(Some("http://localhost.evil.example"), Some("x")));
    }

    #[test]
    fn configured_origins_and_the_wildcard_are_honoured() {
        let policy = OriginPolicy::new(&["https://Chat.Example.com/".to_owned()]);
        assert!(policy.allows(Some("https://chat.example.com"), Some("gw:3000")));
        assert!(!policy.allows(Some("http://chat.example.com"), Some("gw:3000")));
        assert!(OriginPolicy::new(&["*".to_owned()]).allows(Some("https://a.b"), None));
    }
}
