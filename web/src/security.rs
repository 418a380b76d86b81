//! Passwords, tokens and the login rate limit.
//!
//! Passwords are hashed with argon2id (OWASP's parameters: the `argon2` crate's defaults) on a
//! blocking thread, since a hash takes tens of milliseconds of CPU. Session tokens and CSRF
//! tokens are 32 random bytes from the OS, hex-encoded; only a session token's SHA-256 is
//! stored, so the database alone does not let anyone log in.
//!
//! A new password must be long enough and hard to guess: zxcvbn (Dropbox's estimator, which
//! knows common passwords, words, names, dates, keyboard patterns and the user's own e-mail
//! address) must score it at least [`MIN_PASSWORD_SCORE`], its guesses ≥ 10^10.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

/// The shortest password accepted at registration.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The longest password accepted: argon2 takes any length, but hashing megabytes per attempt
/// would hand a cheap denial of service to anyone.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The lowest zxcvbn score accepted (0 to 4); zxcvbn's authors call anything below 3 too weak.
pub const MIN_PASSWORD_SCORE: u8 = 3;

/// How much of a password the estimator looks at: its time grows quickly with the length, and
/// a password this long that starts out guessable is still refused.
const ESTIMATED_CHARS: usize = 100;

/// Failed logins allowed per e-mail address and client address within [`LOGIN_WINDOW`].
pub const MAX_LOGIN_FAILURES: usize = 5;

/// The window over which failed logins are counted.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Why hashing or checking a password failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The stored hash is not a PHC string argon2 understands.
    #[error("the stored password hash is malformed: {0}")]
    BadHash(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The blocking thread was lost.
    #[error("the password hashing thread failed: {0}")]
    Thread(String),
}

/// Hashes a password with argon2id and a random salt; answers the PHC string.
pub async fn hash_password(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| PasswordError::Thread(e.to_string()))?
}

/// Whether `password` matches the PHC string `hash`.
pub async fn verify_password(password: String, hash: String) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| PasswordError::BadHash(e.to_string()))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| PasswordError::Thread(e.to_string()))?
}

/// Why `password` may not be chosen by the user with address `email`, as a message for the
/// form; `None` when it is strong enough. Takes milliseconds of CPU on long passwords: call it
/// on a blocking thread.
pub fn password_problem(password: &str, email: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Some(format!("choose a password of at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Some(format!("choose a password of at most {MAX_PASSWORD_BYTES} bytes"));
    }
    let estimated: String = password.chars().take(ESTIMATED_CHARS).collect();
    let (local_part, domain) = email.split_once('@').unwrap_or((email, ""));
    let entropy = zxcvbn::zxcvbn(&estimated, &[email, local_part, domain, "kiln"]);
    if u8::from(entropy.score()) >= MIN_PASSWORD_SCORE {
        return None;
    }
    let mut message = "this password is too easy to guess".to_owned();
    if let Some(feedback) = entropy.feedback() {
        if let Some(warning) = feedback.warning() {
            message.push_str(&format!(": {}", warning.to_string().trim_end_matches('.').to_lowercase()));
        }
        for suggestion in feedback.suggestions() {
            message.push_str(&format!("; {}", suggestion.to_string().trim_end_matches('.').to_lowercase()));
        }
    }
    message.push_str("; a few unrelated words make a strong password");
    Some(message)
}

/// A new random token: 32 bytes from the OS's generator, hex-encoded.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// The SHA-256 of a token, hex-encoded: what the database keeps of a session token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts failed logins per (e-mail address, client address) and refuses more than
/// [`MAX_LOGIN_FAILURES`] within [`LOGIN_WINDOW`]. Kept in memory: a restart forgets it, which
/// costs an attacker a restart of the server per five guesses.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<(String, IpAddr), Vec<Instant>>>,
}

impl LoginLimiter {
    /// Whether another attempt is allowed now; when not, how long until one is.
    pub fn check(&self, email: &str, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|poison| poison.into_inner());
        let Some(times) = failures.get_mut(&(email.trim().to_lowercase(), ip)) else { return Ok(()) };
        times.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
        if times.len() < MAX_LOGIN_FAILURES {
            return Ok(());
        }
        let oldest = times.iter().min().copied().unwrap_or(now);
        Err(LOGIN_WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Records a failed attempt.
    pub fn failed(&self, email: &str, ip: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|poison| poison.into_inner());
        // Forget stale entries now and then so the map does not grow without bound.
        if failures.len() > 10_000 {
            failures.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < LOGIN_WINDOW));
        }
        failures.entry((email.trim().to_lowercase(), ip)).or_default().push(now);
    }

    /// Forgets the failures of a successful login.
    pub fn succeeded(&self, email: &str, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|poison| poison.into_inner());
        failures.remove(&(email.trim().to_lowercase(), ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_to_argon2id_and_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse".into(), hash.clone()).await.unwrap());
        assert!(!verify_password("wrong horse".into(), hash).await.unwrap());
        assert!(verify_password("x".into(), "not a hash".into()).await.is_err());
    }

    #[test]
    fn weak_passwords_are_refused_with_the_estimators_feedback() {
        for weak in ["password", "password123", "qwertyuiop", "abcdefgh", "aaaaaaaaaa", "Julia1987", "ada@example"] {
            let problem = password_problem(weak, "ada@example.com").unwrap_or_else(|| panic!("{weak} accepted"));
            assert!(problem.starts_with("this password is too easy to guess"), "{weak}: {problem}");
        }
        let problem = password_problem("password1", "ada@example.com").unwrap();
        assert!(problem.contains("common password"), "{problem}");
        assert_eq!(
            password_problem("short", "a@b.c").as_deref(),
            Some("choose a password of at least 8 characters"),
            "the length check stays"
        );
        assert!(password_problem(&"x".repeat(MAX_PASSWORD_BYTES + 1), "a@b.c").unwrap().contains("at most 1024"));
        for strong in ["correct horse battery", "tangerine-osprey-lattice", "Wq7#vL9p!xR2"] {
            assert_eq!(password_problem(strong, "ada@example.com"), None, "{strong}");
        }
        let started = std::time::Instant::now();
        let _ = password_problem(&"ab1".repeat(300), "a@b.c");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "a long password is estimated quickly");
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), a);
        assert!(constant_time_eq(&a, &a.clone()) && !constant_time_eq(&a, &b) && !constant_time_eq(&a, "x"));
    }

    #[test]
    fn the_sixth_failure_within_a_minute_is_refused() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_LOGIN_FAILURES {
            assert!(limiter.check("A@x.org", ip).is_ok());
            limiter.failed("a@x.org", ip);
        }
        let wait = limiter.check("a@x.org", ip).unwrap_err();
        assert!(wait <= LOGIN_WINDOW && wait > Duration::from_secs(50), "{wait:?}");
        assert!(limiter.check("b@x.org", ip).is_ok(), "another address is not limited");
        assert!(limiter.check("a@x.org", "10.0.0.1".parse().unwrap()).is_ok(), "nor another client");
        limiter.succeeded("a@x.org", ip);
        assert!(limiter.check("a@x.org", ip).is_ok());
    }
}
