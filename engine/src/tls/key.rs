//! API keys and join tokens as users copy them: `kiln-key-v2.<trust>.<secret>` (for clients)
//! and `kiln-join-v2.<trust>.<secret>` (for workers). `<trust>` says how to check the
//! controller before the secret is sent: the CA's SHA-256 fingerprint in hex (the controller's
//! own CA), `pki` (an operator's certificate, checked against the system roots or a CA file)
//! or `plaintext` (no TLS, behind `--insecure-plaintext`). Only `<secret>` travels to the
//! controller, and only once the link is verified.

use crate::rpc::Secret;

use super::{Fingerprint, TlsError};

/// What a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A client's API key.
    Client,
    /// A worker's join token.
    Worker,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Client => "kiln-key-v2",
            Role::Worker => "kiln-join-v2",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Role::Client => "API key",
            Role::Worker => "join token",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Role::Client => "api_key",
            Role::Worker => "join_token",
        }
    }
}

/// How the controller is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Its chain ends at the CA with this fingerprint.
    Pinned(Fingerprint),
    /// Its certificate is an operator's: checked against the system roots or a given CA file.
    WebPki,
    /// Plain TCP: nothing is checked, nothing is private.
    Plaintext,
}

impl Trust {
    fn to_text(self) -> String {
        match self {
            Trust::Pinned(fingerprint) => fingerprint.to_hex(),
            Trust::WebPki => "pki".to_owned(),
            Trust::Plaintext => "plaintext".to_owned(),
        }
    }
}

/// An API key or join token: how to check the controller, and the secret to send it then.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub role: Role,
    pub trust: Trust,
    pub secret: Secret,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("role", &self.role).field("trust", &self.trust).finish_non_exhaustive()
    }
}

impl Credential {
    /// A credential of `role` for `secret`.
    pub fn new(role: Role, trust: Trust, secret: Secret) -> Credential {
        Credential { role, trust, secret }
    }

    /// Parses the text a user pasted; an old key (a bare secret) gets an error saying where
    /// the new one is.
    pub fn parse(role: Role, text: &str) -> Result<Credential, TlsError> {
        let text = text.trim();
        let (noun, prefix, file) = (role.noun(), role.prefix(), role.file());
        let mut parts = text.splitn(3, '.');
        let (Some(head), Some(trust), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TlsError::BadKey(format!(
                "this {noun} has the old format, without the controller's CA fingerprint: use the {prefix}.… \
                 {noun} that the controller prints on its first start and stores in its data directory ({file})"
            )));
        };
        if head != prefix {
            let hint = match head {
                "kiln-key-v2" | "kiln-join-v2" => " (an API key and a join token were swapped?)",
                _ => "",
            };
            return Err(TlsError::BadKey(format!("this is not a {noun}: it should start with {prefix}.{hint}")));
        }
        let trust = match trust {
            "pki" => Trust::WebPki,
            "plaintext" => Trust::Plaintext,
            hex => Trust::Pinned(Fingerprint::from_hex(hex).ok_or_else(|| {
                TlsError::BadKey(format!(
                    "the {noun}'s CA fingerprint `{hex}` is not 64 hex digits: copy the whole {noun} again"
                ))
            })?),
        };
        if secret.is_empty() {
            return Err(TlsError::BadKey(format!("the {noun} has no secret after its fingerprint")));
        }
        Ok(Credential { role, trust, secret: Secret::new(secret) })
    }

    /// The text to give users: `kiln-key-v2.<trust>.<secret>`. Never log it.
    pub fn to_text(&self) -> String {
        format!("{}.{}.{}", self.role.prefix(), self.trust.to_text(), self.secret.expose())
    }

    /// The text as a [`Secret`], for APIs that take a key's text.
    pub fn to_secret(&self) -> Secret {
        Secret::new(self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_dots_in_their_secret() {
        let fingerprint = Fingerprint::of(b"ca");
        for trust in [Trust::Pinned(fingerprint), Trust::WebPki, Trust::Plaintext] {
            let key = Credential::new(Role::Client, trust, Secret::new("s3cret.with.dots"));
            let parsed = Credential::parse(Role::Client, &key.to_text()).unwrap();
            assert_eq!(parsed, key);
            assert_eq!(parsed.secret.expose(), "s3cret.with.dots");
        }
        let token = Credential::new(Role::Worker, Trust::Pinned(fingerprint), Secret::generate());
        assert!(token.to_text().starts_with(&format!("kiln-join-v2.{}.", fingerprint.to_hex())));
    }

    #[test]
    fn old_swapped_and_damaged_keys_get_clear_errors() {
        let old = Credential::parse(Role::Client, Secret::generate().expose()).unwrap_err();
        assert!(old.to_string().contains("old format"), "{old}");
        let token = Credential::new(Role::Worker, Trust::Plaintext, Secret::new("x")).to_text();
        let swapped = Credential::parse(Role::Client, &token).unwrap_err();
        assert!(swapped.to_string().contains("swapped"), "{swapped}");
        let damaged = Credential::parse(Role::Client, "kiln-key-v2.abcd.secret").unwrap_err();
        assert!(damaged.to_string().contains("not 64 hex digits"), "{damaged}");
        assert!(Credential::parse(Role::Client, "kiln-key-v2.pki.").is_err());
        assert!(
            !format!("{:?}", Credential::parse(Role::Client, "kiln-key-v2.pki.hidden").unwrap()).contains("hidden")
        );
    }
}
