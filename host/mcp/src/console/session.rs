//! The console's sessions: kept by the server, named by a random id in a
//! cookie, each with its own CSRF token, expiring, and capped in number.
//!
//! # Security
//! - An id is 256 bits from the operating system's generator
//!   (`getrandom`), hex in the cookie. The server keeps only its SHA-256:
//!   a lookup's timing says nothing about a guessed id, and a memory dump
//!   of the table holds no usable cookie.
//! - A session ends [`SessionLimits::idle`] after its last request and
//!   [`SessionLimits::lifetime`] after login, whatever happens; an expired
//!   one is removed when it is next seen (or when a login needs room).
//! - At most [`SessionLimits::max_sessions`] live at once: a login past the
//!   cap ends the session idle the longest, so the table is bounded by
//!   configuration, not by how often approvers log in.
//! - At most [`MAX_SESSIONS_PER_APPROVER`] of them are one approver's: a
//!   login past that ends that approver's own session idle the longest.
//!   Without it, one approver (or a stolen approver token) logging in in a
//!   loop filled the table and so ended everyone else's sessions,
//!   operators' included, for as long as the loop ran.
//! - The CSRF token is compared through its SHA-256 in constant time
//!   ([`airlock_audit::token::matches_sha256`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Sessions one approver holds at once (fewer when
/// [`SessionLimits::max_sessions`] is lower): a browser or two per
/// approver, with room to spare.
pub(crate) const MAX_SESSIONS_PER_APPROVER: usize = 8;

/// How long sessions live and how many there may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// A session unused this long ends.
    pub(crate) idle: Duration,
    /// A session ends this long after login, used or not.
    pub(crate) lifetime: Duration,
    /// Sessions at once.
    pub(crate) max_sessions: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            idle: Duration::from_secs(30 * 60),
            lifetime: Duration::from_secs(12 * 3600),
            max_sessions: 64,
        }
    }
}

/// What a request's session holds.
#[derive(Clone)]
pub(crate) struct SessionView {
    /// The approver's configured name.
    pub(crate) approver: String,
    /// The approver's token, which [`airlock_host::Host::decide`] checks
    /// again on every decision. Kept in memory only, never sent back.
    pub(crate) token: String,
    /// The CSRF token the session's forms carry.
    pub(crate) csrf: String,
    csrf_sha256: String,
    /// The approver may take over (`operator = true`): mode, pauses,
    /// rollbacks.
    pub(crate) operator: bool,
}

impl fmt::Debug for SessionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionView")
            .field("approver", &self.approver)
            .finish_non_exhaustive()
    }
}

impl SessionView {
    /// Whether `token` (from a form) is this session's CSRF token, in
    /// constant time.
    pub(crate) fn csrf_matches(&self, token: &str) -> bool {
        airlock_audit::token::matches_sha256(token, &self.csrf_sha256)
    }
}

struct Session {
    view: SessionView,
    created: Instant,
    last_seen: Instant,
}

/// The session table.
pub(crate) struct Sessions {
    limits: SessionLimits,
    by_id_hash: Mutex<HashMap<String, Session>>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The operating system has no randomness to give.
#[derive(Debug)]
pub(crate) struct NoRandomness;

fn random_hex() -> Result<String, NoRandomness> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| NoRandomness)?;
    Ok(hex::encode(bytes))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            by_id_hash: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while the lock was held leaves a table of whole entries:
        // go on with it.
        self.by_id_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.last_seen) >= self.limits.idle
            || now.saturating_duration_since(session.created) >= self.limits.lifetime
    }

    /// A new session for `approver`: its id (for the cookie) and view.
    pub(crate) fn create(
        &self,
        approver: &str,
        token: &str,
        operator: bool,
    ) -> Result<(String, SessionView), NoRandomness> {
        self.create_at(approver, token, operator, Instant::now())
    }

    pub(crate) fn create_at(
        &self,
        approver: &str,
        token: &str,
        operator: bool,
        now: Instant,
    ) -> Result<(String, SessionView), NoRandomness> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let view = SessionView {
            approver: approver.to_owned(),
            token: token.to_owned(),
            csrf_sha256: sha256_hex(&csrf),
            csrf,
            operator,
        };
        let mut table = self.table();
        table.retain(|_, s| !self.expired(s, now));
        let own = MAX_SESSIONS_PER_APPROVER
            .min(self.limits.max_sessions)
            .max(1);
        loop {
            let mine = table.iter().filter(|(_, s)| s.view.approver == approver);
            if mine.clone().count() < own {
                break;
            }
            let Some(oldest) = mine
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            tracing::info!(
                approver,
                "console sessions of one approver at their cap: ending this approver's session idle the longest"
            );
            table.remove(&oldest);
        }
        while table.len() >= self.limits.max_sessions.max(1) {
            let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            tracing::info!("console session cap reached: ending the session idle the longest");
            table.remove(&oldest);
        }
        table.insert(
            sha256_hex(&id),
            Session {
                view: view.clone(),
                created: now,
                last_seen: now,
            },
        );
        Ok((id, view))
    }

    /// The live session `id` names, its idle time restarted; `None` when
    /// there is none or it has expired (then it is removed).
    pub(crate) fn get(&self, id: &str) -> Option<SessionView> {
        self.get_at(id, Instant::now())
    }

    pub(crate) fn get_at(&self, id: &str, now: Instant) -> Option<SessionView> {
        let key = sha256_hex(id);
        let mut table = self.table();
        let session = table.get_mut(&key)?;
        if self.expired(session, now) {
            table.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.view.clone())
    }

    /// End session `id` (logout).
    pub(crate) fn remove(&self, id: &str) {
        self.table().remove(&sha256_hex(id));
    }

    /// Sessions held (expired ones not yet removed included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(600),
            max_sessions: 3,
        }
    }

    #[test]
    fn ids_and_csrf_tokens_are_256_random_bits_and_never_repeat() {
        let sessions = Sessions::new(limits());
        let (a, va) = sessions.create("alice", "t", false).unwrap();
        let (b, vb) = sessions.create("alice", "t", false).unwrap();
        for value in [&a, &b, &va.csrf, &vb.csrf] {
            assert_eq!(value.len(), 64);
            assert!(value.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(a, b);
        assert_ne!(va.csrf, vb.csrf);
        assert_ne!(a, va.csrf);
        // Only hashes are keys.
        assert!(!sessions.table().contains_key(&a));
    }

    #[test]
    fn a_session_expires_when_idle_and_after_its_lifetime() {
        let sessions = Sessions::new(limits());
        let start = Instant::now();
        let (id, _) = sessions.create_at("alice", "t", false, start).unwrap();
        // Used within the idle bound: it lives on.
        let mut at = start;
        for _ in 0..9 {
            at += Duration::from_secs(59);
            assert!(sessions.get_at(&id, at).is_some());
        }
        // Past its lifetime, however recently used.
        assert!(
            sessions
                .get_at(&id, start + Duration::from_secs(600))
                .is_none()
        );
        assert_eq!(sessions.len(), 0, "an expired session is removed");
        let (idle, _) = sessions.create_at("alice", "t", false, start).unwrap();
        assert!(
            sessions
                .get_at(&idle, start + Duration::from_secs(60))
                .is_none()
        );
    }

    #[test]
    fn the_table_is_capped_and_the_longest_idle_session_goes_first() {
        let sessions = Sessions::new(limits());
        let start = Instant::now();
        let (first, _) = sessions.create_at("a", "t", false, start).unwrap();
        let (second, _) = sessions
            .create_at("b", "t", false, start + Duration::from_secs(1))
            .unwrap();
        let (third, _) = sessions
            .create_at("c", "t", false, start + Duration::from_secs(2))
            .unwrap();
        // `first` used again: `second` is now idle the longest.
        assert!(
            sessions
                .get_at(&first, start + Duration::from_secs(3))
                .is_some()
        );
        let (fourth, _) = sessions
            .create_at("d", "t", false, start + Duration::from_secs(4))
            .unwrap();
        assert_eq!(sessions.len(), 3);
        let at = start + Duration::from_secs(5);
        assert!(sessions.get_at(&second, at).is_none());
        for live in [&first, &third, &fourth] {
            assert!(sessions.get_at(live, at).is_some());
        }
    }

    /// One approver logging in over and over ends only their own
    /// sessions, never another approver's.
    #[test]
    fn one_approver_logging_in_again_and_again_ends_only_their_own_sessions() {
        let sessions = Sessions::new(SessionLimits {
            max_sessions: 64,
            ..limits()
        });
        let start = Instant::now();
        let (operator, _) = sessions.create_at("olga", "t", true, start).unwrap();
        let mut at = start;
        let mut mallory = Vec::new();
        for _ in 0..200 {
            at += Duration::from_millis(10);
            mallory.push(sessions.create_at("mallory", "t", false, at).unwrap().0);
        }
        assert_eq!(sessions.len(), 1 + MAX_SESSIONS_PER_APPROVER);
        assert!(sessions.get_at(&operator, at).is_some());
        // The newest of mallory's live; the oldest went first.
        for (i, id) in mallory.iter().enumerate() {
            let live = i >= mallory.len() - MAX_SESSIONS_PER_APPROVER;
            assert_eq!(sessions.get_at(id, at).is_some(), live, "session {i}");
        }
    }

    #[test]
    fn csrf_tokens_match_exactly_and_logout_ends_a_session() {
        let sessions = Sessions::new(limits());
        let (id, view) = sessions.create("alice", "t", false).unwrap();
        assert!(view.csrf_matches(&view.csrf));
        assert!(!view.csrf_matches(""));
        assert!(!view.csrf_matches(&view.csrf[..63]));
        assert!(!view.csrf_matches(&view.csrf.to_uppercase()));
        assert!(!format!("{view:?}").contains(&view.csrf));
        assert!(!format!("{view:?}").contains("token: "));
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }
}
