//! Signed sessions (docs/wire.md §15): Ed25519 over what a receiver trusts, pure computation.
//!
//! Three things are signed. The **session statement** binds the manifest hash to the session
//! id and the geometry; the origin server signs it once and relays pass it on unchanged, so a
//! receiver behind any number of relays checks the content against the origin's key. Each
//! **Announce** is signed by whoever sends it (its control address, stripes and timestamp are
//! its own), and so is each session **Done** (bound to the sender's control address, so a Done
//! heard on one tier cannot end a session on another). What is signed is a domain-separated
//! byte string built here from the parsed packet, never the raw datagram, so the signature
//! does not depend on how the bytes arrived.
//!
//! Keys are 32-byte Ed25519 seeds and public keys; file formats live in the node
//! (`blockcast keygen`), randomness too: this crate cannot reach the OS.

use std::net::SocketAddr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::wire::{AnnounceRepr, DoneReason, SessionId};

/// Length of a public key on the wire.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;
/// A signature block on the wire: the signer's public key, then the signature.
pub const SIGNED_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;

const STATEMENT_DOMAIN: &[u8] = b"blockcast/2 session statement\0";
const ANNOUNCE_DOMAIN: &[u8] = b"blockcast/2 announce\0";
const DONE_DOMAIN: &[u8] = b"blockcast/2 done\0";
const CATALOG_DOMAIN: &[u8] = b"blockcast/2 catalog\0";

/// A signature as it travels: who signed (their public key) and the signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub key: [u8; PUBLIC_KEY_LEN],
    pub sig: [u8; SIGNATURE_LEN],
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature(key {})", hex(&self.key[..8]))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 2·N hex digits into N bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// An Ed25519 signing key (the secret half). Its `Debug` shows the public key only.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", hex(&self.public_key()))
    }
}

impl Signer {
    /// The key whose secret seed is `seed` (32 random bytes: `blockcast keygen`).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Signer {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public half, as receivers list it (`--trust`).
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key: self.public_key(),
            sig: self.key.sign(message).to_bytes(),
        }
    }

    /// Signs the session statement that `a` carries (its session, manifest and geometry).
    pub fn sign_statement(&self, a: &AnnounceRepr) -> Signature {
        self.sign(&statement_message(a))
    }

    /// Signs the announce `a` as it will be sent (statement signature included): sets its
    /// `announce_sig`.
    pub fn sign_announce(&self, a: &mut AnnounceRepr) {
        a.announce_sig = None;
        let key = self.public_key();
        a.announce_sig = Some(self.sign(&announce_message(a, &key)));
    }

    /// Signs a session Done of `session` sent from `control`.
    pub fn sign_done(
        &self,
        session: SessionId,
        reason: DoneReason,
        control: SocketAddr,
    ) -> Signature {
        self.sign(&done_message(session, reason, control))
    }

    /// Signs an origin's catalog statement (wire.md §17.6).
    pub fn sign_catalog(&self, c: &CatalogStatement) -> Signature {
        self.sign(&c.message())
    }
}

/// What an origin signs about its catalog (wire.md §17.6): which catalog, and its bytes' hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogStatement {
    pub generation: u64,
    pub catalog_len: u32,
    pub catalog_hash: [u8; 32],
    pub issued: u64,
}

impl CatalogStatement {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(CATALOG_DOMAIN.len() + 52);
        m.extend_from_slice(CATALOG_DOMAIN);
        m.extend_from_slice(&self.generation.to_be_bytes());
        m.extend_from_slice(&self.catalog_len.to_be_bytes());
        m.extend_from_slice(&self.catalog_hash);
        m.extend_from_slice(&self.issued.to_be_bytes());
        m
    }
}

/// What a check of a signature found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by a trusted key, and the signature holds.
    Trusted,
    /// No signature.
    Unsigned,
    /// A signature by a key not in the trusted set.
    UntrustedKey,
    /// A trusted key, but the signature does not hold (forged or damaged).
    BadSignature,
}

/// The public keys a receiver trusts (`receive --trust`). Empty: trust is not checked.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<([u8; PUBLIC_KEY_LEN], VerifyingKey)>,
}

impl TrustedKeys {
    /// The keys, each 32 bytes; fails on one that is not a valid Ed25519 point.
    pub fn new(keys: &[[u8; PUBLIC_KEY_LEN]]) -> Result<Self, &'static str> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let v = VerifyingKey::from_bytes(k).map_err(|_| "not an Ed25519 public key")?;
            out.push((*k, v));
        }
        Ok(TrustedKeys { keys: out })
    }

    /// No key is trusted (signatures are not required).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `key` is one of the trusted keys (a cheap test before any curve arithmetic).
    pub fn contains(&self, key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }

    fn check(&self, sig: Option<&Signature>, message: impl FnOnce() -> Vec<u8>) -> Verdict {
        let Some(s) = sig else {
            return Verdict::Unsigned;
        };
        let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == s.key) else {
            return Verdict::UntrustedKey;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&s.sig);
        // `verify_strict`: no malleable or small-order encodings.
        match key.verify_strict(&message(), &sig) {
            Ok(()) => Verdict::Trusted,
            Err(_) => Verdict::BadSignature,
        }
    }

    /// Checks the statement signature of `a`.
    pub fn check_statement(&self, a: &AnnounceRepr) -> Verdict {
        self.check(a.statement_sig.as_ref(), || statement_message(a))
    }

    /// Checks the announce signature of `a`.
    pub fn check_announce(&self, a: &AnnounceRepr) -> Verdict {
        let key = a.announce_sig.map(|s| s.key).unwrap_or_default();
        self.check(a.announce_sig.as_ref(), || announce_message(a, &key))
    }

    /// Checks a session Done's signature, for a Done that should come from `control`.
    pub fn check_done(
        &self,
        session: SessionId,
        reason: DoneReason,
        control: SocketAddr,
        sig: Option<&Signature>,
    ) -> Verdict {
        self.check(sig, || done_message(session, reason, control))
    }

    /// Checks an origin's catalog statement signature.
    pub fn check_catalog(&self, c: &CatalogStatement, sig: Option<&Signature>) -> Verdict {
        self.check(sig, || c.message())
    }
}

/// The session statement's signed bytes (wire.md §15.1).
pub fn statement_message(a: &AnnounceRepr) -> Vec<u8> {
    let mut m = Vec::with_capacity(STATEMENT_DOMAIN.len() + 64);
    m.extend_from_slice(STATEMENT_DOMAIN);
    m.extend_from_slice(&a.session.0.to_be_bytes());
    m.extend_from_slice(&a.manifest_len.to_be_bytes());
    m.extend_from_slice(&a.manifest_hash);
    m.extend_from_slice(&a.unit_size.to_be_bytes());
    m.extend_from_slice(&a.units_per_block.to_be_bytes());
    m.extend_from_slice(&a.object_count.to_be_bytes());
    m.extend_from_slice(&a.total_bytes.to_be_bytes());
    m.extend_from_slice(&a.issued.to_be_bytes());
    m
}

/// The announce's signed bytes (wire.md §15.2): the announce as emitted up to its signer's
/// key, that key included, without its own signature.
fn announce_message(a: &AnnounceRepr, key: &[u8; PUBLIC_KEY_LEN]) -> Vec<u8> {
    let unsigned = AnnounceRepr {
        announce_sig: None,
        ..a.clone()
    };
    let mut body = vec![0u8; unsigned.buffer_len()];
    let n = crate::wire::Packet::Announce(unsigned)
        .emit(&mut body)
        .unwrap_or(0);
    body.truncate(n);
    let mut m = Vec::with_capacity(ANNOUNCE_DOMAIN.len() + n + PUBLIC_KEY_LEN);
    m.extend_from_slice(ANNOUNCE_DOMAIN);
    m.extend_from_slice(&body);
    m.extend_from_slice(key);
    m
}

/// A session Done's signed bytes (wire.md §15.3).
fn done_message(session: SessionId, reason: DoneReason, control: SocketAddr) -> Vec<u8> {
    let mut m = Vec::with_capacity(DONE_DOMAIN.len() + 32);
    m.extend_from_slice(DONE_DOMAIN);
    m.extend_from_slice(&session.0.to_be_bytes());
    m.push(reason as u8);
    let ip = match control.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    m.extend_from_slice(&ip);
    m.extend_from_slice(&control.port().to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BlockIndex, ObjectId};

    fn announce() -> AnnounceRepr {
        AnnounceRepr {
            session: SessionId(7),
            control: SocketAddr::from(([127, 0, 0, 1], 4000)),
            unit_size: 1400,
            units_per_block: 749,
            max_parity: 128,
            stripes: 1,
            object_count: 1,
            total_bytes: 1 << 20,
            manifest_len: 99,
            manifest_hash: [5; 32],
            group_size: 1,
            grtt_us: 100,
            pass_object: ObjectId(0),
            pass_block: BlockIndex(0),
            timestamp: 1,
            issued: 1_700_000_000,
            statement_sig: None,
            announce_sig: None,
        }
    }

    #[test]
    fn a_statement_signed_by_a_trusted_key_holds_and_any_change_breaks_it() {
        let signer = Signer::from_seed(&[1; 32]);
        let other = Signer::from_seed(&[2; 32]);
        let trust = TrustedKeys::new(&[signer.public_key()]).unwrap();
        let mut a = announce();
        assert_eq!(trust.check_statement(&a), Verdict::Unsigned);
        a.statement_sig = Some(signer.sign_statement(&a));
        assert_eq!(trust.check_statement(&a), Verdict::Trusted);
        // The announce's own fields are not part of the statement (relays change them).
        a.control = SocketAddr::from(([127, 0, 0, 2], 5000));
        a.stripes = 3;
        assert_eq!(trust.check_statement(&a), Verdict::Trusted);
        let mut changed = a.clone();
        changed.manifest_hash[0] ^= 1;
        assert_eq!(trust.check_statement(&changed), Verdict::BadSignature);
        let mut changed = a.clone();
        changed.session = SessionId(8);
        assert_eq!(trust.check_statement(&changed), Verdict::BadSignature);
        let mut foreign = a.clone();
        foreign.statement_sig = Some(other.sign_statement(&a));
        assert_eq!(trust.check_statement(&foreign), Verdict::UntrustedKey);
    }

    #[test]
    fn an_announce_signature_binds_its_control_address_and_timestamp() {
        let signer = Signer::from_seed(&[1; 32]);
        let trust = TrustedKeys::new(&[signer.public_key()]).unwrap();
        let mut a = announce();
        a.statement_sig = Some(signer.sign_statement(&a));
        signer.sign_announce(&mut a);
        assert_eq!(trust.check_announce(&a), Verdict::Trusted);
        for change in [
            |a: &mut AnnounceRepr| a.control = SocketAddr::from(([127, 0, 0, 9], 4000)),
            |a: &mut AnnounceRepr| a.timestamp += 1,
            |a: &mut AnnounceRepr| a.stripes += 1,
            |a: &mut AnnounceRepr| a.pass_block = BlockIndex(3),
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert_eq!(trust.check_announce(&b), Verdict::BadSignature);
        }
    }

    #[test]
    fn a_done_signature_holds_only_for_its_session_reason_and_control() {
        let signer = Signer::from_seed(&[3; 32]);
        let trust = TrustedKeys::new(&[signer.public_key()]).unwrap();
        let c = SocketAddr::from(([10, 0, 0, 1], 9000));
        let s = signer.sign_done(SessionId(1), DoneReason::Complete, c);
        assert_eq!(
            trust.check_done(SessionId(1), DoneReason::Complete, c, Some(&s)),
            Verdict::Trusted
        );
        let relay = SocketAddr::from(([10, 0, 1, 1], 9000));
        assert_eq!(
            trust.check_done(SessionId(1), DoneReason::Complete, relay, Some(&s)),
            Verdict::BadSignature
        );
        assert_eq!(
            trust.check_done(SessionId(1), DoneReason::Aborted, c, Some(&s)),
            Verdict::BadSignature
        );
        assert_eq!(
            trust.check_done(SessionId(1), DoneReason::Complete, c, None),
            Verdict::Unsigned
        );
    }

    #[test]
    fn hex_round_trips() {
        let k = Signer::from_seed(&[9; 32]).public_key();
        assert_eq!(from_hex::<32>(&hex(&k)), Some(k));
        assert_eq!(from_hex::<32>("zz"), None);
    }

    #[test]
    fn a_catalog_statement_holds_only_as_signed() {
        let signer = Signer::from_seed(&[1; 32]);
        let trust = TrustedKeys::new(&[signer.public_key()]).unwrap();
        let c = CatalogStatement {
            generation: 5,
            catalog_len: 100,
            catalog_hash: [3; 32],
            issued: 1_700_000_000,
        };
        let sig = signer.sign_catalog(&c);
        assert_eq!(trust.check_catalog(&c, Some(&sig)), Verdict::Trusted);
        assert_eq!(trust.check_catalog(&c, None), Verdict::Unsigned);
        for changed in [
            CatalogStatement { generation: 6, ..c },
            CatalogStatement {
                catalog_len: 99,
                ..c
            },
            CatalogStatement {
                catalog_hash: [4; 32],
                ..c
            },
            CatalogStatement { issued: 1, ..c },
        ] {
            assert_eq!(
                trust.check_catalog(&changed, Some(&sig)),
                Verdict::BadSignature
            );
        }
        let other = Signer::from_seed(&[2; 32]).sign_catalog(&c);
        assert_eq!(trust.check_catalog(&c, Some(&other)), Verdict::UntrustedKey);
    }
}
