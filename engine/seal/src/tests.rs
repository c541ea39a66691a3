use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn secret(b: u8) -> Secret {
    Secret::new([b; SECRET_LEN])
}

/// A datagram of `kind` with `body` after a common header (what an endpoint emits).
fn datagram(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0x42, 0x43, 2, kind, flags, 0, 0xde, 0xad, 0xbe, 0xef];
    d.extend_from_slice(body);
    d
}

fn seal(s: &mut Sealer, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + TRAILER_LEN, 0);
    let n = s.seal_in_place(&mut buf, plain.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

#[test]
fn a_sealed_datagram_opens_to_what_was_sent_and_hides_its_body() {
    let mut s = Sealer::new(&secret(1), [7; SENDER_LEN]);
    let mut o = Opener::new(&secret(1));
    let body = b"a known plaintext marker in a unit payload".repeat(20);
    let plain = datagram(Kind::Data as u8, 0x01, &body);
    let mut sealed = seal(&mut s, &plain);
    assert_eq!(sealed[FLAGS_AT], 0x81);
    assert_eq!(&sealed[..3], &plain[..3]);
    assert!(!sealed.windows(16).any(|w| body.windows(16).any(|b| b == w)));
    let n = o.open_in_place(&mut sealed).unwrap();
    assert_eq!(&sealed[..n], &plain[..]);
    assert_eq!(o.stats().opened, 1);
}

/// The construction wire.md §16 specifies, rebuilt here from its parts (BLAKE3 key derivation,
/// AEGIS-256X4 with a 16-byte tag, the nonce layout): a sealed datagram is exactly that.
#[test]
fn a_sealed_datagram_is_what_the_wire_spec_describes() {
    let sender = [0x33; SENDER_LEN];
    let mut s = Sealer::new(&secret(5), sender);
    let plain = datagram(Kind::Nack as u8, 0x02, b"a control body");
    s.seal_in_place(&mut [0; 64], 20).unwrap(); // control counter 0 used up
    let sealed = seal(&mut s, &plain); // control counter 1
    let mut material = [5u8; SECRET_LEN + SENDER_LEN];
    material[SECRET_LEN..].copy_from_slice(&sender);
    let key = blake3::derive_key(
        "blockcast wire v2 2026-12-02 sender key (AEGIS-256X4)",
        &material,
    );
    let mut nonce = [0u8; 32];
    nonce[0] = 1; // the control class
    nonce[31] = 1; // counter 1, big-endian in the last 8 bytes
    let mut header = plain[..HEADER_LEN].to_vec();
    header[FLAGS_AT] |= FLAG_TAGGED;
    let mut body = plain[HEADER_LEN..].to_vec();
    let tag = Aegis256X4::<16>::new(&key, &nonce).encrypt_in_place(&mut body, &header);
    let mut expect = header;
    expect.extend_from_slice(&body);
    expect.extend_from_slice(&sender);
    expect.extend_from_slice(&1u64.to_be_bytes());
    expect.extend_from_slice(&tag);
    assert_eq!(sealed, expect);
}

#[test]
fn another_secret_a_plain_packet_and_a_short_one_are_dropped_and_counted() {
    let mut s = Sealer::new(&secret(1), [7; SENDER_LEN]);
    let mut o = Opener::new(&secret(2));
    let plain = datagram(Kind::Nack as u8, 0, &[5; 40]);
    let mut sealed = seal(&mut s, &plain);
    assert_eq!(o.open_in_place(&mut sealed), Err(OpenError::Forged));
    let mut p = plain.clone();
    p.extend_from_slice(&[0; TRAILER_LEN]);
    assert_eq!(o.open_in_place(&mut p), Err(OpenError::Untagged));
    let mut short = seal(&mut s, &plain)[..HEADER_LEN + TRAILER_LEN - 1].to_vec();
    assert_eq!(o.open_in_place(&mut short), Err(OpenError::Short));
    // A plain packet shorter than any trailer is untagged, not short.
    assert_eq!(
        o.open_in_place(&mut plain[..21].to_vec()),
        Err(OpenError::Untagged)
    );
    assert_eq!(
        o.open_in_place(&mut plain[..3].to_vec()),
        Err(OpenError::Short)
    );
    let st = o.stats();
    assert_eq!((st.forged, st.untagged, st.short, st.opened), (1, 2, 2, 0));
    assert_eq!(st.dropped(), 5);
    // A forged sender id took no place in the key cache.
    assert!(o.keys.is_empty());
}

#[test]
fn a_replayed_control_packet_is_dropped_and_a_replayed_unit_is_not() {
    let mut s = Sealer::new(&secret(1), [7; SENDER_LEN]);
    let mut o = Opener::new(&secret(1));
    let nack = seal(&mut s, &datagram(Kind::Nack as u8, 0, &[1; 30]));
    let unit = seal(&mut s, &datagram(Kind::Data as u8, 0, &[2; 30]));
    for (d, second) in [(nack, Err(OpenError::Replayed)), (unit, Ok(40))] {
        assert_eq!(o.open_in_place(&mut d.clone()), Ok(40));
        assert_eq!(o.open_in_place(&mut d.clone()), second);
    }
    assert_eq!(o.stats().replayed, 1);
}

#[test]
fn late_control_packets_are_taken_once_within_the_window_and_dropped_below_it() {
    let mut s = Sealer::new(&secret(1), [7; SENDER_LEN]);
    let mut o = Opener::new(&secret(1));
    let all: Vec<Vec<u8>> = (0..400)
        .map(|i| seal(&mut s, &datagram(Kind::Receipt as u8, 0, &[i as u8; 20])))
        .collect();
    for (i, d) in all.iter().enumerate() {
        if i != 10 && i != 200 {
            assert!(o.open_in_place(&mut d.clone()).is_ok(), "{i}");
        }
    }
    // 199 behind the newest: taken, once.
    assert!(o.open_in_place(&mut all[200].clone()).is_ok());
    assert_eq!(
        o.open_in_place(&mut all[200].clone()),
        Err(OpenError::Replayed)
    );
    // 389 behind: below the window.
    assert_eq!(
        o.open_in_place(&mut all[10].clone()),
        Err(OpenError::Replayed)
    );
}

#[test]
fn each_class_counts_on_its_own_and_a_sealer_stops_before_its_counter_wraps() {
    let mut s = Sealer::new(&secret(1), [7; SENDER_LEN]);
    let counter = |d: &[u8]| {
        let at = d.len() - TAG_LEN - COUNTER_LEN;
        u64::from_be_bytes(d[at..at + COUNTER_LEN].try_into().unwrap())
    };
    let u0 = seal(&mut s, &datagram(Kind::Parity as u8, 0, &[1; 8]));
    let c0 = seal(&mut s, &datagram(Kind::Announce as u8, 0, &[1; 8]));
    let u1 = seal(&mut s, &datagram(Kind::Manifest as u8, 0, &[1; 8]));
    assert_eq!((counter(&u0), counter(&c0), counter(&u1)), (0, 0, 1));
    // Same counter, different class: different nonces, so different ciphertexts.
    assert_ne!(u0[HEADER_LEN..18], c0[HEADER_LEN..18]);
    s.next[1] = u64::MAX;
    let mut buf = datagram(Kind::Join as u8, 0, &[0; 8]);
    let n = buf.len();
    buf.resize(n + TRAILER_LEN, 0);
    assert_eq!(s.seal_in_place(&mut buf, n), Err(SealError::Exhausted));
    assert_eq!(
        s.seal_in_place(&mut buf[..n + TRAILER_LEN - 1], n),
        Err(SealError::NoRoom)
    );
}

#[test]
fn seal_into_gathers_a_header_and_a_payload() {
    let mut a = Sealer::new(&secret(3), [9; SENDER_LEN]);
    let mut b = Sealer::new(&secret(3), [9; SENDER_LEN]);
    let head = datagram(Kind::Data as u8, 0, &[4; 16]);
    let payload = [6u8; 100];
    let mut out = vec![0u8; head.len() + payload.len() + TRAILER_LEN];
    let n = a.seal_into(&head, &payload, &mut out).unwrap();
    let whole = [&head[..], &payload[..]].concat();
    assert_eq!(out[..n], seal(&mut b, &whole)[..]);
}

#[test]
fn a_full_sender_table_refuses_new_control_senders_but_not_units() {
    let sec = secret(1);
    let mut o = Opener::new(&sec);
    for i in 0..MAX_SENDERS as u64 {
        let mut id = [0u8; SENDER_LEN];
        id[..8].copy_from_slice(&i.to_be_bytes());
        o.windows.insert(id, Window::new(0));
    }
    let mut s = Sealer::new(&sec, [0xff; SENDER_LEN]);
    let mut c = seal(&mut s, &datagram(Kind::Leave as u8, 0, &[1; 17]));
    assert_eq!(o.open_in_place(&mut c), Err(OpenError::TooManySenders));
    let mut u = seal(&mut s, &datagram(Kind::Data as u8, 0, &[1; 17]));
    assert!(o.open_in_place(&mut u).is_ok());
    assert_eq!(o.stats().refused, 1);
}

proptest! {
    #[test]
    fn every_datagram_round_trips(kind in 1u8..=14, flags in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..3000), id in any::<[u8; 16]>()) {
        let mut s = Sealer::new(&secret(5), id);
        let mut o = Opener::new(&secret(5));
        let plain = datagram(kind, flags, &body);
        let mut sealed = seal(&mut s, &plain);
        let n = o.open_in_place(&mut sealed).unwrap();
        prop_assert_eq!(&sealed[..n], &plain[..]);
    }

    #[test]
    fn any_changed_bit_is_refused(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 1u8..=14, bit in any::<proptest::sample::Index>()) {
        let mut s = Sealer::new(&secret(5), [1; 16]);
        let mut o = Opener::new(&secret(5));
        let mut sealed = seal(&mut s, &datagram(kind, 0, &body));
        let b = bit.index(sealed.len() * 8);
        sealed[b / 8] ^= 1 << (b % 8);
        prop_assert!(o.open_in_place(&mut sealed).is_err());
        prop_assert_eq!(o.stats().opened, 0);
    }

    #[test]
    fn opening_arbitrary_bytes_never_panics(mut d in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut o = Opener::new(&secret(5));
        prop_assert!(o.open_in_place(&mut d).is_err());
    }

    /// The window against a model: a control counter is taken iff it was never taken and is
    /// above (highest taken - 256).
    #[test]
    fn the_window_matches_its_model(counters in proptest::collection::vec(0u64..1200, 1..300)) {
        let mut w: Option<Window> = None;
        let mut taken = BTreeSet::new();
        for c in counters {
            let top = taken.iter().next_back().copied();
            let expect = !taken.contains(&c) && top.is_none_or(|t| c + REPLAY_WINDOW > t);
            let got = w.as_ref().is_none_or(|w| w.fresh(c));
            prop_assert_eq!(got, expect, "counter {}", c);
            if got {
                taken.insert(c);
                match w.as_mut() {
                    Some(w) => w.mark(c),
                    None => w = Some(Window::new(c)),
                }
            }
        }
    }
}
