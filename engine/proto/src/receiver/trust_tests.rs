//! A receiver against forged servers, Dones and floods, wired to real senders by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{Signer, TrustedKeys};
use crate::wire::{DoneReason, DoneRepr, Manifest, ObjectEntry, Packet, ReceiverId, SessionId};
use crate::{Geometry, MemStore, Receiver, ReceiverConfig, Sender, SenderConfig, SliceSource};

const BLOCK: usize = 2048;

fn sender<'a>(
    content: &'a [u8],
    session: u32,
    control: u16,
    signer: Option<Signer>,
) -> Sender<SliceSource<'a>> {
    sender_waiting(content, session, control, signer, 1)
}

/// A sender that starts its first pass once `members` receivers joined.
fn sender_waiting<'a>(
    content: &'a [u8],
    session: u32,
    control: u16,
    signer: Option<Signer>,
    members: usize,
) -> Sender<SliceSource<'a>> {
    let manifest = Manifest {
        unit_size: 256,
        units_per_block: 8,
        objects: vec![ObjectEntry::from_content("a", content, BLOCK)],
    };
    Sender::new(
        SenderConfig {
            session: SessionId(session),
            geometry: Geometry {
                unit_size: 256,
                units_per_block: 8,
                max_parity: 8,
            },
            control: SocketAddr::from(([127, 0, 0, 1], control)),
            min_receivers: members,
            max_wait: Duration::from_secs(60),
            signer,
            issued: 1,
            ..SenderConfig::default()
        },
        manifest,
        SliceSource::new(vec![content], BLOCK),
    )
    .expect("sender")
}

fn receiver(trust: &[&Signer], expect: Option<[u8; 32]>) -> Receiver<MemStore> {
    let keys: Vec<[u8; 32]> = trust.iter().map(|s| s.public_key()).collect();
    Receiver::new(
        ReceiverConfig {
            id: ReceiverId(9),
            trust: TrustedKeys::new(&keys).unwrap(),
            expect,
            ..ReceiverConfig::default()
        },
        MemStore::default(),
    )
}

/// Every datagram `s` has due at `now`, whole (unit payloads included).
fn out(s: &mut Sender<SliceSource<'_>>, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let mut v = Vec::new();
    if s.poll_timeout().is_some_and(|t| t <= now) {
        s.handle_timeout(now);
    }
    while let Some(t) = s.poll_transmit(now, &mut buf) {
        let mut d = buf[..t.len].to_vec();
        if let Some(p) = t.payload {
            d.extend_from_slice(p.bytes(s.source()));
        }
        v.push(d);
    }
    v
}

/// Runs `s` and `r` against each other, delivering `extra` to the receiver first at each
/// step, until the receiver is complete or ended (at most `steps` of 1 ms).
fn run(
    s: &mut Sender<SliceSource<'_>>,
    r: &mut Receiver<MemStore>,
    t0: Instant,
    steps: u32,
    mut extra: impl FnMut(Instant) -> Vec<Vec<u8>>,
) -> Instant {
    let from_server = SocketAddr::from(([127, 0, 0, 1], 1));
    let from_rx = SocketAddr::from(([127, 0, 0, 2], 2));
    let mut buf = vec![0u8; 4096];
    let mut now = t0;
    for _ in 0..steps {
        for d in extra(now).into_iter().chain(out(s, now)) {
            r.handle_datagram(now, from_server, &d);
        }
        if r.poll_timeout().is_some_and(|t| t <= now) {
            r.handle_timeout(now);
        }
        while let Some(t) = r.poll_transmit(now, &mut buf) {
            s.handle_datagram(now, from_rx, &buf[..t.len]);
        }
        if r.is_complete() || r.is_ended() {
            break;
        }
        now += Duration::from_millis(1);
    }
    now
}

fn content(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * BLOCK)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_forged_server_heard_first_is_refused_and_the_trusted_one_taken() {
    let origin = Signer::from_seed(&[1; 32]);
    let mallory = Signer::from_seed(&[2; 32]);
    let (real, fake) = (content(1, 4), content(2, 4));
    let mut good = sender(&real, 10, 4000, Some(origin.clone()));
    // Unsigned, and signed by an untrusted key: both announce first, every millisecond.
    let mut unsigned = sender(&fake, 20, 4001, None);
    let mut foreign = sender(&fake, 30, 4002, Some(mallory));
    let mut r = receiver(&[&origin], None);
    let t0 = Instant::now();
    let mut tick = 0;
    run(&mut good, &mut r, t0, 2_000, |now| {
        tick += 1;
        if tick < 5 {
            // Before the real server's first announce.
            return [out(&mut unsigned, now), out(&mut foreign, now)].concat();
        }
        out(&mut unsigned, now)
            .into_iter()
            .chain(out(&mut foreign, now))
            .filter(|d| matches!(Packet::parse(d), Ok(Packet::Announce(_))))
            .collect()
    });
    assert!(r.is_complete(), "{:?}", r.stats());
    assert_eq!(r.session(), Some(SessionId(10)));
    assert_eq!(r.signer(), Some(origin.public_key()));
    assert!(r.control_signed());
    assert_eq!(r.store().objects[0], &real[..]);
    // Each forger's announces heard before the real one's, refused.
    assert!(r.stats().forged_announces >= 2, "{:?}", r.stats());
}

#[test]
fn an_unsigned_or_wrongly_signed_done_is_no_done() {
    let origin = Signer::from_seed(&[1; 32]);
    let data = content(1, 8);
    let mut s = sender(&data, 10, 4000, Some(origin.clone()));
    let mut r = receiver(&[&origin], None);
    let t0 = Instant::now();
    // Until the manifest is in and units flow.
    let mut now = t0;
    for _ in 0..3 {
        now = run(&mut s, &mut r, now, 1, |_| Vec::new()) + Duration::from_millis(1);
    }
    assert!(r.manifest().is_some());
    let emit = |d: DoneRepr| {
        let mut b = vec![0u8; 256];
        let n = Packet::Done(d).emit(&mut b).unwrap();
        b.truncate(n);
        b
    };
    let session = SessionId(10);
    let unsigned = emit(DoneRepr::Session {
        session,
        reason: DoneReason::Aborted,
        sig: None,
    });
    // Signed by the trusted key, but for another control address (a Done heard on another
    // tier), and signed for another reason.
    let other_tier = emit(DoneRepr::Session {
        session,
        reason: DoneReason::Aborted,
        sig: Some(origin.sign_done(
            session,
            DoneReason::Aborted,
            SocketAddr::from(([10, 9, 9, 9], 4000)),
        )),
    });
    let control = SocketAddr::from(([127, 0, 0, 1], 4000));
    let relabeled = emit(DoneRepr::Session {
        session,
        reason: DoneReason::Aborted,
        sig: Some(origin.sign_done(session, DoneReason::Complete, control)),
    });
    let from = SocketAddr::from(([127, 0, 0, 1], 1));
    for d in [&unsigned, &other_tier, &relabeled] {
        r.handle_datagram(now, from, d);
    }
    assert!(!r.is_ended());
    assert_eq!(r.stats().forged_dones, 3);
    run(&mut s, &mut r, now, 2_000, |_| Vec::new());
    assert!(r.is_complete(), "the transfer went on: {:?}", r.stats());
    // The server's own signed Done is taken.
    let real = emit(DoneRepr::Session {
        session,
        reason: DoneReason::Complete,
        sig: Some(origin.sign_done(session, DoneReason::Complete, control)),
    });
    r.handle_datagram(now, from, &real);
    assert!(r.is_ended());
}

#[test]
fn expect_pins_the_content_by_manifest_or_object_hash_without_keys() {
    let (real, fake) = (content(1, 2), content(2, 2));
    let object_hash = *blake3::hash(&real).as_bytes();
    for pin in ["manifest", "object"] {
        let mut good = sender(&real, 10, 4000, None);
        let mut forged = sender(&fake, 20, 4001, None);
        let want = match pin {
            "manifest" => good.manifest_hash(),
            _ => object_hash,
        };
        let mut r = receiver(&[], Some(want));
        let t0 = Instant::now();
        // The forged server alone first, long enough to give its whole manifest.
        run(&mut forged, &mut r, t0, 20, |_| Vec::new());
        assert!(!r.is_complete());
        assert!(r.stats().forged_announces >= 1, "{pin}: {:?}", r.stats());
        run(
            &mut good,
            &mut r,
            t0 + Duration::from_millis(30),
            2_000,
            |now| out(&mut forged, now),
        );
        assert!(r.is_complete(), "{pin}");
        assert_eq!(r.store().objects[0], &real[..], "{pin}");
        assert_eq!(r.signer(), None, "no keys: unauthenticated");
    }
}

#[test]
fn a_flood_of_forged_announces_costs_a_bounded_number_of_signature_checks() {
    let origin = Signer::from_seed(&[1; 32]);
    let data = content(1, 1);
    let mut s = sender(&data, 10, 4000, Some(origin.clone()));
    let t0 = Instant::now();
    let announce = out(&mut s, t0)
        .into_iter()
        .find(|d| matches!(Packet::parse(d), Ok(Packet::Announce(_))))
        .unwrap();
    let Ok(Packet::Announce(mut a)) = Packet::parse(&announce) else {
        unreachable!()
    };
    // The trusted key named, the signature garbage: only a check can tell.
    let mut sig = a.statement_sig.unwrap();
    sig.sig[0] ^= 1;
    a.statement_sig = Some(sig);
    let mut buf = vec![0u8; 1024];
    let n = Packet::Announce(a).emit(&mut buf).unwrap();
    let mut r = receiver(&[&origin], None);
    let from = SocketAddr::from(([127, 0, 0, 1], 1));
    for _ in 0..10_000 {
        r.handle_datagram(t0, from, &buf[..n]);
    }
    let st = r.stats();
    assert_eq!(st.forged_announces + st.unchecked_signatures, 10_000);
    assert!(st.forged_announces <= 64, "{st:?}");
    assert_eq!(r.session(), None);
}

#[test]
fn a_manifest_longer_than_its_objects_and_bytes_justify_is_refused() {
    let data = content(1, 1);
    let mut s = sender(&data, 10, 4000, None);
    let t0 = Instant::now();
    let announce = out(&mut s, t0)
        .into_iter()
        .find(|d| matches!(Packet::parse(d), Ok(Packet::Announce(_))))
        .unwrap();
    let Ok(Packet::Announce(mut a)) = Packet::parse(&announce) else {
        unreachable!()
    };
    // One object of 2 KiB cannot need a 64 MiB manifest.
    a.manifest_len = 64 << 20;
    let mut buf = vec![0u8; 1024];
    let n = Packet::Announce(a).emit(&mut buf).unwrap();
    let mut r = receiver(&[], None);
    r.handle_datagram(t0, SocketAddr::from(([127, 0, 0, 1], 1)), &buf[..n]);
    assert_eq!(r.session(), None);
    assert_eq!(r.stats().bad_packets, 1);
}

#[test]
fn parity_beyond_the_memory_bound_is_dropped() {
    let data = content(1, 16);
    // Waits for a second receiver: this one gets the manifest and no unit.
    let mut s = sender_waiting(&data, 10, 4000, None, 2);
    let mut r = Receiver::new(
        ReceiverConfig {
            id: ReceiverId(9),
            // Two parity units of 256 bytes at most.
            max_parity_bytes: 512,
            ..ReceiverConfig::default()
        },
        MemStore::default(),
    );
    let t0 = Instant::now();
    let now = run(&mut s, &mut r, t0, 5, |_| Vec::new());
    assert!(r.manifest().is_some());
    // Parity for every block, as a forger (or a burst of repairs) might send it.
    let mut sent = 0;
    for b in 0..16u32 {
        let mut buf = vec![0u8; 512];
        let h = crate::wire::UnitHeaderRepr {
            session: SessionId(10),
            parity: true,
            repair: false,
            object: crate::wire::ObjectId(0),
            block: crate::wire::BlockIndex(b),
            index: 0,
            round_end: 1,
            timestamp: 0,
        };
        let n = h.emit(&mut buf).unwrap();
        r.handle_datagram(now, SocketAddr::from(([127, 0, 0, 1], 1)), &buf[..n + 256]);
        sent += 1;
    }
    let st = r.stats();
    assert_eq!(st.parity_units + st.duplicates + st.parity_dropped, sent);
    assert!(st.parity_units <= 2, "{st:?}");
    assert!(st.parity_dropped >= 1, "{st:?}");
}
