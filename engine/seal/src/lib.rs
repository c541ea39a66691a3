//! Packet protection for closed groups (docs/wire.md §16, docs/SECURITY.md "Closed groups").
//!
//! With a group secret every datagram, in both directions, is sealed as a whole: the 10-byte
//! common header stays in the clear and is authenticated, everything after it (a unit's
//! header and payload, every control body) is encrypted with AEGIS-256X4, and a 40-byte
//! trailer follows:
//!
//! ```text
//! | common header (TAGGED set) | body, encrypted | sender (16) | counter (8) | tag (16) |
//! ```
//!
//! **Nonces never repeat under one key.** Each sealing endpoint (a server's control thread and
//! each of its data threads, a receiver, each side of a relay) draws a random 128-bit sender
//! id when it starts and seals under its own key, `BLAKE3-derive_key(KEY_CONTEXT, secret ‖
//! sender)`. Its nonce is `class ‖ 0 (23 bytes) ‖ counter` (32 bytes), where `class` is 1 for control
//! packets and 0 for units and manifest chunks, and each class has its own counter that only
//! goes up and never wraps ([`SealError::Exhausted`] at 2^64 − 1). So two datagrams share a
//! (key, nonce) only if two endpoints drew the same 128-bit id: with n endpoints ever under
//! one secret the chance is below n²/2^129 (2^-65 for four billion endpoints).
//!
//! **Replays of control packets are dropped.** The opener keeps, per sender, the highest
//! control counter it accepted and a 256-wide window below it (RFC 4303 §3.4.3); units and
//! manifest chunks are not windowed (a replayed one is a duplicate the protocol already drops
//! and counts).
//!
//! **Without the secret nothing is parsed.** [`Opener::open_in_place`] reads only the flags
//! byte, the kind byte and the trailer before the tag is checked; a datagram that is short,
//! not sealed, forged, sealed under another secret or replayed is dropped and counted in
//! [`OpenStats`], and the protocol never sees it.
//!
//! This crate is pure computation (no I/O, no clock, no unsafe); the node seals and opens per
//! batch between the sockets and the protocol (engine/node/src/driver.rs).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;

use aegis::aegis256x4::Aegis256X4;
use blockcast_proto::wire::{Kind, FLAG_TAGGED, HEADER_LEN};

/// Bytes of the random sender id in the trailer.
pub const SENDER_LEN: usize = 16;
/// Bytes of the counter in the trailer.
pub const COUNTER_LEN: usize = 8;
/// Bytes of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram is longer than the plain one: sender, counter, tag.
pub const TRAILER_LEN: usize = SENDER_LEN + COUNTER_LEN + TAG_LEN;
/// Bytes of a group secret.
pub const SECRET_LEN: usize = 32;
/// The BLAKE3 key-derivation context of a sender's key (never used for anything else).
pub const KEY_CONTEXT: &str = "blockcast wire v2 2026-12-02 sender key (AEGIS-256X4)";
/// Control packets remembered below the highest one accepted from a sender.
pub const REPLAY_WINDOW: u64 = 256;
/// Senders whose control packets an opener tracks at most (more than any session's members;
/// only holders of the secret can add one).
pub const MAX_SENDERS: usize = 1 << 18;
/// Sender keys an opener keeps ready at most; past that it starts over (a key is derived
/// again in well under a microsecond).
const KEY_CACHE: usize = 4096;

/// Bytes of an AEGIS-256X4 nonce.
const NONCE_LEN: usize = 32;

/// One sender's AEGIS-256X4 key (derived from the secret and the sender id).
#[derive(Clone)]
struct SenderKey([u8; 32]);

impl SenderKey {
    /// Encrypts `body` in place and returns the tag over `header` and the ciphertext.
    fn seal(&self, class: Class, counter: u64, header: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        Aegis256X4::<TAG_LEN>::new(&self.0, &class.nonce(counter)).encrypt_in_place(body, header)
    }

    /// Checks `tag` over `header` and `body`, then decrypts `body` in place; on a failed check
    /// `body` is left as it was.
    fn open(
        &self,
        class: Class,
        counter: u64,
        header: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        Aegis256X4::<TAG_LEN>::new(&self.0, &class.nonce(counter))
            .decrypt_in_place(body, tag, header)
            .is_ok()
    }
}

impl Drop for SenderKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// Offset of the kind byte and of the flags byte in the common header (wire.md §2).
const KIND_AT: usize = 3;
const FLAGS_AT: usize = 4;

/// A group secret: 32 random bytes shared by every member of a closed group.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    pub fn new(bytes: [u8; SECRET_LEN]) -> Self {
        Secret(bytes)
    }

    /// The AEGIS-256X4 key of `sender` under this secret.
    fn sender_key(&self, sender: &[u8; SENDER_LEN]) -> SenderKey {
        let mut material = [0u8; SECRET_LEN + SENDER_LEN];
        material[..SECRET_LEN].copy_from_slice(&self.0);
        material[SECRET_LEN..].copy_from_slice(sender);
        let key = blake3::derive_key(KEY_CONTEXT, &material);
        material.fill(0);
        SenderKey(key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// Which counter (and nonce space) a packet kind uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Units and manifest chunks: checked against the manifest, a replay is a duplicate.
    Data = 0,
    /// Everything else: windowed against replay.
    Control = 1,
}

impl Class {
    fn of(kind: u8) -> Class {
        const DATA: [u8; 4] = [
            Kind::Data as u8,
            Kind::Parity as u8,
            Kind::Xor as u8,
            Kind::Manifest as u8,
        ];
        if DATA.contains(&kind) {
            Class::Data
        } else {
            Class::Control
        }
    }

    /// `class ‖ 0 (23 bytes) ‖ counter`, big-endian (wire.md §16.2).
    fn nonce(self, counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[0] = self as u8;
        n[NONCE_LEN - COUNTER_LEN..].copy_from_slice(&counter.to_be_bytes());
        n
    }
}

/// Why a datagram could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// Shorter than the common header, or no room for the trailer after it.
    NoRoom,
    /// This sender's counter for the packet's class reached 2^64 − 1: it must stop.
    Exhausted,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealError::NoRoom => "no room to seal the datagram",
            SealError::Exhausted => "the sender's packet counter is exhausted",
        })
    }
}

impl std::error::Error for SealError {}

/// Seals what one endpoint sends. Make one per sending thread, with a fresh random sender id.
pub struct Sealer {
    sender: [u8; SENDER_LEN],
    key: SenderKey,
    /// The next counter of each class.
    next: [u64; 2],
}

impl Sealer {
    /// A sealer with sender id `sender`: 16 bytes from the OS's random source, drawn anew for
    /// every sealer (two sealers with one id under one secret would repeat nonces).
    pub fn new(secret: &Secret, sender: [u8; SENDER_LEN]) -> Self {
        Sealer {
            key: secret.sender_key(&sender),
            sender,
            next: [0, 0],
        }
    }

    /// This sealer's sender id.
    pub fn sender(&self) -> [u8; SENDER_LEN] {
        self.sender
    }

    /// Seals the datagram `buf[..len]` in place: sets TAGGED, encrypts everything after the
    /// common header, writes the trailer at `buf[len..len + TRAILER_LEN]`. Returns the sealed
    /// length, `len + TRAILER_LEN`.
    pub fn seal_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        if len < HEADER_LEN || buf.len() < len + TRAILER_LEN {
            return Err(SealError::NoRoom);
        }
        let class = Class::of(buf[KIND_AT]);
        let counter = self.next[class as usize];
        if counter == u64::MAX {
            return Err(SealError::Exhausted);
        }
        self.next[class as usize] = counter + 1;
        buf[FLAGS_AT] |= FLAG_TAGGED;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[..HEADER_LEN]);
        let tag = self
            .key
            .seal(class, counter, &header, &mut buf[HEADER_LEN..len]);
        let t = &mut buf[len..len + TRAILER_LEN];
        t[..SENDER_LEN].copy_from_slice(&self.sender);
        t[SENDER_LEN..SENDER_LEN + COUNTER_LEN].copy_from_slice(&counter.to_be_bytes());
        t[SENDER_LEN + COUNTER_LEN..].copy_from_slice(tag.as_ref());
        Ok(len + TRAILER_LEN)
    }

    /// Seals `head ‖ payload` into `out` (a unit gathered from where its payload lies).
    /// Returns the sealed length; `out` needs `head.len() + payload.len() + TRAILER_LEN` bytes.
    pub fn seal_into(
        &mut self,
        head: &[u8],
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let len = head.len() + payload.len();
        if out.len() < len + TRAILER_LEN {
            return Err(SealError::NoRoom);
        }
        out[..head.len()].copy_from_slice(head);
        out[head.len()..len].copy_from_slice(payload);
        self.seal_in_place(out, len)
    }
}

/// Why a datagram was not opened. Counted in [`OpenStats`], never parsed further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// TAGGED is not set: a plain packet, from someone without the secret.
    Untagged,
    /// TAGGED, but too short to hold a header and a trailer.
    Short,
    /// The tag does not hold: forged, altered, or sealed under another secret.
    Forged,
    /// A control packet already accepted, or older than the replay window.
    Replayed,
    /// A control packet from a new sender while [`MAX_SENDERS`] are tracked.
    TooManySenders,
}

/// What an [`Opener`] did with what it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenStats {
    /// Datagrams opened and handed on.
    pub opened: u64,
    /// Dropped: not sealed (TAGGED clear).
    pub untagged: u64,
    /// Dropped: too short for a header and a trailer (and not plainly untagged).
    pub short: u64,
    /// Dropped: the tag did not hold (another secret, or altered).
    pub forged: u64,
    /// Dropped: a replayed or too old control packet.
    pub replayed: u64,
    /// Dropped: a control packet from one sender too many.
    pub refused: u64,
}

impl OpenStats {
    /// Every datagram dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.untagged + self.short + self.forged + self.replayed + self.refused
    }

    /// Adds `o` (another thread's opener) to these.
    pub fn add(&mut self, o: &OpenStats) {
        self.opened += o.opened;
        self.untagged += o.untagged;
        self.short += o.short;
        self.forged += o.forged;
        self.replayed += o.replayed;
        self.refused += o.refused;
    }
}

/// The control packets accepted from one sender: the highest counter, and which of the
/// [`REPLAY_WINDOW`] below it (bit i: counter `top - i`).
#[derive(Clone, Copy, Debug)]
struct Window {
    top: u64,
    seen: [u64; 4],
}

impl Window {
    fn new(counter: u64) -> Self {
        Window {
            top: counter,
            seen: [1, 0, 0, 0],
        }
    }

    /// Whether `counter` may be accepted (not seen, not below the window).
    fn fresh(&self, counter: u64) -> bool {
        if counter > self.top {
            return true;
        }
        let back = self.top - counter;
        back < REPLAY_WINDOW && self.seen[(back / 64) as usize] & (1 << (back % 64)) == 0
    }

    /// Records `counter` (which [`fresh`](Self::fresh) allowed).
    fn mark(&mut self, counter: u64) {
        if counter > self.top {
            let shift = counter - self.top;
            self.shift(shift);
            self.top = counter;
            self.seen[0] |= 1;
        } else {
            let back = self.top - counter;
            self.seen[(back / 64) as usize] |= 1 << (back % 64);
        }
    }

    /// Moves every bit `by` places older (bits past the window fall off).
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen = [0; 4];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        let old = self.seen;
        for i in (0..4usize).rev() {
            let hi = i.checked_sub(words).map_or(0, |j| old[j]);
            let lo = i.checked_sub(words + 1).map_or(0, |j| {
                if bits == 0 {
                    0
                } else {
                    old[j] >> (64 - bits)
                }
            });
            self.seen[i] = (hi << bits) | lo;
        }
    }
}

/// Opens what one endpoint receives (any number of senders). Make one per receiving thread.
pub struct Opener {
    secret: Secret,
    keys: HashMap<[u8; SENDER_LEN], SenderKey>,
    /// The sender of the last datagram opened, and its key.
    last: Option<([u8; SENDER_LEN], SenderKey)>,
    windows: HashMap<[u8; SENDER_LEN], Window>,
    stats: OpenStats,
}

impl Opener {
    pub fn new(secret: &Secret) -> Self {
        Opener {
            secret: secret.clone(),
            keys: HashMap::new(),
            last: None,
            windows: HashMap::new(),
            stats: OpenStats::default(),
        }
    }

    /// Opens a sealed datagram in place: checks the tag (and, for a control packet, the
    /// replay window), decrypts the body, clears TAGGED. Returns the length of the opened
    /// datagram, `datagram[..len]`, as its sender emitted it; on an error the datagram is to
    /// be dropped (it was counted).
    pub fn open_in_place(&mut self, datagram: &mut [u8]) -> Result<usize, OpenError> {
        let r = self.open(datagram);
        let s = &mut self.stats;
        match r {
            Ok(_) => s.opened += 1,
            Err(OpenError::Short) => s.short += 1,
            Err(OpenError::Untagged) => s.untagged += 1,
            Err(OpenError::Forged) => s.forged += 1,
            Err(OpenError::Replayed) => s.replayed += 1,
            Err(OpenError::TooManySenders) => s.refused += 1,
        }
        r
    }

    fn open(&mut self, d: &mut [u8]) -> Result<usize, OpenError> {
        if d.get(FLAGS_AT).is_some_and(|f| f & FLAG_TAGGED == 0) {
            return Err(OpenError::Untagged);
        }
        if d.len() < HEADER_LEN + TRAILER_LEN {
            return Err(OpenError::Short);
        }
        let end = d.len() - TRAILER_LEN;
        let mut sender = [0u8; SENDER_LEN];
        sender.copy_from_slice(&d[end..end + SENDER_LEN]);
        let mut c = [0u8; COUNTER_LEN];
        c.copy_from_slice(&d[end + SENDER_LEN..end + SENDER_LEN + COUNTER_LEN]);
        let counter = u64::from_be_bytes(c);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&d[end + SENDER_LEN + COUNTER_LEN..]);
        // The kind is read before the tag is checked only to choose the nonce space and the
        // window: the header is authenticated, so a changed kind fails the tag.
        let class = Class::of(d[KIND_AT]);
        if class == Class::Control {
            match self.windows.get(&sender) {
                Some(w) if !w.fresh(counter) => return Err(OpenError::Replayed),
                None if self.windows.len() >= MAX_SENDERS => return Err(OpenError::TooManySenders),
                _ => {}
            }
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&d[..HEADER_LEN]);
        let body = &mut d[HEADER_LEN..end];
        // Datagrams come in runs from one sender (a GRO batch is one flow): the last sender's
        // key is tried before the cache is looked up.
        let opened = match &self.last {
            Some((s, k)) if *s == sender => k.open(class, counter, &header, body, &tag),
            _ => match self.keys.get(&sender) {
                Some(k) => {
                    let ok = k.open(class, counter, &header, body, &tag);
                    if ok {
                        self.last = Some((sender, k.clone()));
                    }
                    ok
                }
                None => {
                    // A sender's key is kept only once a datagram of it opened: forged sender
                    // ids cost a derivation each, never a place in the cache.
                    let k = self.secret.sender_key(&sender);
                    let ok = k.open(class, counter, &header, body, &tag);
                    if ok {
                        if self.keys.len() >= KEY_CACHE {
                            self.keys.clear();
                        }
                        self.keys.insert(sender, k.clone());
                        self.last = Some((sender, k));
                    }
                    ok
                }
            },
        };
        if !opened {
            return Err(OpenError::Forged);
        }
        if class == Class::Control {
            self.windows
                .entry(sender)
                .and_modify(|w| w.mark(counter))
                .or_insert_with(|| Window::new(counter));
        }
        d[FLAGS_AT] &= !FLAG_TAGGED;
        Ok(end)
    }

    /// What this opener did so far.
    pub fn stats(&self) -> OpenStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
