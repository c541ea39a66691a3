//! Whom a receiver believes (docs/wire.md §15.5): whether it may adopt a session
//! ([`Receiver::may_adopt`], the one place that decides), the signatures its Announces and
//! Dones must carry with trusted keys, the content `expect` pins, and the bound on what an
//! Announce may make it allocate for the manifest.

use std::time::Instant;

use super::Receiver;
use crate::auth::{Signature, Verdict};
use crate::store::BlockStore;
use crate::wire::{AnnounceRepr, DoneReason, SessionId};

/// Signature checks a receiver makes per second at most, and in a burst: a flood of forged
/// announces costs it this much CPU (each check is tens of microseconds), no more.
pub(super) const SIGNATURE_CHECKS_PER_SEC: f64 = 256.0;
pub(super) const SIGNATURE_CHECK_BURST: f64 = 64.0;

/// Manifest hashes of sessions this receiver adopted and then found to be other content
/// (`expect` naming an object's hash): kept so that their announces are not adopted again.
const REJECTED_KEPT: usize = 16;

/// What the receiver knows of the adopted session's signatures.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SessionAuth {
    /// The statement's signature, checked and trusted (the key is the content's signer).
    pub(super) statement: Option<Signature>,
    /// The adopted announces are signed by a trusted key; a session Done must be too. False
    /// for a relay without a key (content pinned by the statement, control unsigned).
    pub(super) control_signed: bool,
}

impl<S: BlockStore> Receiver<S> {
    /// Whether this receiver may adopt the session `a` announces (it follows none yet): the
    /// one place that decides. After a fail-over only the same content will do; content
    /// other than `expect` pins is refused, so is an announce whose manifest cannot be as
    /// long as it says for its objects and bytes; with trusted keys the statement must be
    /// signed by one of them, and the announce too when it is signed at all (an unsigned
    /// announce comes from a relay without a key: the statement still pins the content).
    pub fn may_adopt(&mut self, now: Instant, a: &AnnounceRepr) -> bool {
        if self.known_hash.is_some_and(|h| h != a.manifest_hash)
            || self.rejected.contains(&a.manifest_hash)
        {
            self.stats.strangers += 1;
            return false;
        }
        if u64::from(a.manifest_len) > manifest_bound(a) {
            self.stats.bad_packets += 1;
            return false;
        }
        if let Some(want) = self.cfg.expect {
            // The manifest hash, or (a one-object session) the object's hash, checked when
            // the manifest is here.
            if want != a.manifest_hash && a.object_count != 1 {
                self.stats.forged_announces += 1;
                return false;
            }
        }
        self.announce_trusted(now, a)
    }

    /// With trusted keys: whether `a` carries a trusted statement and, if signed, a trusted
    /// announce signature (counted as forged otherwise). Without keys: true.
    pub(super) fn announce_trusted(&mut self, now: Instant, a: &AnnounceRepr) -> bool {
        if self.cfg.trust.is_empty() {
            return true;
        }
        let forged = |rx: &mut Self| {
            rx.stats.forged_announces += 1;
            false
        };
        let Some(st) = a.statement_sig else {
            return forged(self);
        };
        if !self.cfg.trust.contains(&st.key) {
            return forged(self);
        }
        // An announce of the source we follow: its statement was checked. From another source
        // (one we may follow), it is checked afresh.
        let adopted = self.announce.is_some() && self.is_our_source(a);
        if adopted {
            // The session's statement was checked: another one is a forgery, and a session
            // whose announces were signed does not take unsigned ones.
            if self.auth.statement != Some(st)
                || (self.auth.control_signed && a.announce_sig.is_none())
            {
                return forged(self);
            }
        }
        if let Some(s) = &a.announce_sig {
            if !self.cfg.trust.contains(&s.key) {
                return forged(self);
            }
        }
        let checks =
            usize::from(self.auth.statement != Some(st)) + usize::from(a.announce_sig.is_some());
        if !self
            .signature_checks
            .take(now, SIGNATURE_CHECKS_PER_SEC, checks as f64)
        {
            self.stats.unchecked_signatures += 1;
            return false;
        }
        if self.auth.statement != Some(st) && self.cfg.trust.check_statement(a) != Verdict::Trusted
        {
            return forged(self);
        }
        if a.announce_sig.is_some() && self.cfg.trust.check_announce(a) != Verdict::Trusted {
            return forged(self);
        }
        if !adopted {
            // A new source's signatures (or the first): the session's from now on.
            self.auth = SessionAuth {
                statement: Some(st),
                control_signed: a.announce_sig.is_some(),
            };
        }
        true
    }

    /// With trusted keys: whether a session Done may end the session (signed by a trusted key
    /// for the adopted control address, and the session's announces were signed). Counted
    /// as forged otherwise. Without keys: true.
    pub(super) fn done_trusted(
        &mut self,
        now: Instant,
        session: SessionId,
        reason: DoneReason,
        sig: Option<&Signature>,
    ) -> bool {
        if self.cfg.trust.is_empty() {
            return true;
        }
        let Some(control) = self.control_addr() else {
            self.stats.forged_dones += 1;
            return false;
        };
        let trusted_key = sig.is_some_and(|s| self.cfg.trust.contains(&s.key));
        if !self.auth.control_signed || !trusted_key {
            self.stats.forged_dones += 1;
            return false;
        }
        if !self
            .signature_checks
            .take(now, SIGNATURE_CHECKS_PER_SEC, 1.0)
        {
            self.stats.unchecked_signatures += 1;
            return false;
        }
        if self.cfg.trust.check_done(session, reason, control, sig) != Verdict::Trusted {
            self.stats.forged_dones += 1;
            return false;
        }
        true
    }

    /// The adopted session turned out to be other content than `expect` pins: forget it and
    /// wait for another.
    pub(super) fn reject_session(&mut self) {
        if let Some(a) = self.announce.take() {
            if self.rejected.len() >= REJECTED_KEPT {
                self.rejected.remove(0);
            }
            self.rejected.push(a.manifest_hash);
        }
        self.stats.forged_announces += 1;
        self.session = self.cfg.session;
        self.auth = SessionAuth::default();
        self.cookie = 0;
        self.assembly.reset();
    }
}

/// The longest manifest an announce's object count and total bytes can justify (wire.md
/// §5.1): the fixed part, each object's entry with the longest name, and a hash per block
/// (at most one partial block per object).
pub fn manifest_bound(a: &AnnounceRepr) -> u64 {
    let objects = u64::from(a.object_count);
    let blocks = a
        .total_bytes
        .div_ceil(a.block_size().max(1))
        .saturating_add(objects);
    9u64.saturating_add(objects.saturating_mul(46 + crate::wire::MAX_NAME_LEN as u64))
        .saturating_add(blocks.saturating_mul(32))
}
