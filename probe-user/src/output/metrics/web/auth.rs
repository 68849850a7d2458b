//! `basic_auth_users`: HTTP basic auth against bcrypt hashes. A bcrypt check costs tens of
//! milliseconds of CPU by design, so checks run off the serving thread, two at a time at most
//! (a flood of wrong passwords costs probe at most two cores' worth of waiting, never its
//! event loop), and a password that passed is remembered, so scrapes do not pay for it again.

use std::{collections::BTreeMap, str::FromStr, sync::Mutex};

use base64::Engine;
use tokio::sync::Semaphore;

use super::WebConfigError;

/// Checks that may run at once.
const CONCURRENT_CHECKS: usize = 2;
/// The cheapest bcrypt cost bcrypt itself allows.
pub const MIN_COST: u32 = 4;
/// The costliest hash accepted. Each step doubles a check's time: cost 12 takes about 0.25 s
/// of a core here, 14 about 1 s; cost 18 held a check for over 25 s and 31 would hold it for
/// days, with every scrape waiting behind it. A check is never longer than this allows.
pub const MAX_COST: u32 = 14;
/// Passwords remembered as good (per user and password, as the exporter-toolkit caches).
const REMEMBERED: usize = 16;

/// The users and their bcrypt hashes.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    checks: Semaphore,
    /// (user, password) pairs that passed, most recent last.
    passed: Mutex<Vec<(String, String)>>,
}

/// Whether a request may have the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401: no credentials, or wrong ones.
    Denied,
}

impl BasicAuth {
    /// Users -> hashes. Every user name must be one a client can send (not empty, no `:`),
    /// and every hash bcrypt of a cost bcrypt allows (4 to 31) and a scraper can wait for (at
    /// most [`MAX_COST`]).
    pub fn new(users: BTreeMap<String, String>) -> Result<BasicAuth, WebConfigError> {
        for (user, hash) in &users {
            if user.is_empty() || user.contains(':') {
                return Err(WebConfigError::BadUser { user: user.clone() });
            }
            let parts =
                bcrypt::HashParts::from_str(hash).map_err(|source| WebConfigError::BadHash {
                    user: user.clone(),
                    source,
                })?;
            let cost = parts.get_cost();
            if !(MIN_COST..=MAX_COST).contains(&cost) {
                return Err(WebConfigError::HashCost {
                    user: user.clone(),
                    cost,
                });
            }
        }
        Ok(BasicAuth {
            users,
            checks: Semaphore::new(CONCURRENT_CHECKS),
            passed: Mutex::new(Vec::new()),
        })
    }

    /// Judges a request by its `Authorization` header.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::Denied;
        };
        if self.remembered(&user, &password) {
            return Verdict::Allowed;
        }
        // An unknown user costs a check all the same (against some user's hash, and fails):
        // timing does not tell which users exist.
        let (known, hash) = match self.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => match self.users.values().next() {
                Some(hash) => (false, hash.clone()),
                None => return Verdict::Denied,
            },
        };
        let Ok(_permit) = self.checks.acquire().await else {
            return Verdict::Denied;
        };
        let candidate = password.clone();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(candidate, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if known && matches {
            self.remember(user, password);
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }

    fn remembered(&self, user: &str, password: &str) -> bool {
        let passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        passed.iter().any(|(u, p)| u == user && p == password)
    }

    fn remember(&self, user: String, password: String) {
        let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        if passed.len() >= REMEMBERED {
            passed.remove(0);
        }
        passed.push((user, password));
    }
}

/// `Basic BASE64(user:password)` -> (user, password).
fn credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}
