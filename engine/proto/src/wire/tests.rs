use super::*;
use proptest::prelude::*;

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    // A control address: a unicast address and a port (what a valid announce carries).
    prop_oneof![
        (1u8..224, any::<[u8; 3]>(), 1u16..)
            .prop_map(|(a, r, p)| SocketAddr::from(([a, r[0], r[1], r[2]], p))),
        (1u16..0xff00, any::<[u8; 14]>(), 1u16..).prop_map(|(head, rest, p)| {
            let mut ip = [0u8; 16];
            ip[..2].copy_from_slice(&head.to_be_bytes());
            ip[2..].copy_from_slice(&rest);
            SocketAddr::from((Ipv6Addr::from(ip), p))
        }),
    ]
}

fn arb_holes() -> impl Strategy<Value = Holes> {
    prop_oneof![
        proptest::collection::vec((0u16..30000, 1u16..1000), 0..20).prop_map(Holes::Ranges),
        proptest::collection::vec(any::<u8>(), 0..100).prop_map(Holes::Bitmap),
    ]
}

fn arb_nack_entry() -> impl Strategy<Value = NackEntry> {
    (
        any::<u32>(),
        any::<u32>(),
        1u16..,
        any::<u16>(),
        arb_holes(),
    )
        .prop_map(|(o, b, missing, parity_seen, holes)| NackEntry {
            object: ObjectId(o),
            block: BlockIndex(b),
            missing,
            parity_seen,
            holes,
        })
}

fn arb_sig() -> impl Strategy<Value = Option<crate::auth::Signature>> {
    proptest::option::of(
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(key, a, b)| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&a);
            sig[32..].copy_from_slice(&b);
            crate::auth::Signature { key, sig }
        }),
    )
}

fn arb_packet() -> impl Strategy<Value = Packet<'static>> {
    let s = any::<u32>().prop_map(SessionId);
    prop_oneof![
        (
            s.clone(),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            1u16..,
            any::<u32>()
        )
            .prop_map(|(session, parity, o, b, i, end, ts)| {
                let (index, round_end) = if parity { (i % end, end) } else { (i, 0) };
                let h = UnitHeaderRepr {
                    session,
                    parity,
                    repair: !parity && i % 2 == 1,
                    object: ObjectId(o),
                    block: BlockIndex(b),
                    index,
                    round_end,
                    timestamp: ts,
                };
                Packet::Unit(h, &[7u8; 33][..1 + (i % 32) as usize])
            }),
        (
            s.clone(),
            arb_addr(),
            (1u16..32000).prop_map(|u| u * 2),
            1u16..=32768,
            1u16..=32768,
            1u16..=MAX_STRIPES as u16,
            any::<(u32, u64, u32, u32)>(),
            1u32..=MAX_MANIFEST_LEN as u32,
            any::<[u8; 32]>(),
            (any::<u64>(), arb_sig(), arb_sig()),
        )
            .prop_map(
                |(session, control, unit_size, upb, mp, stripes, misc, ml, mh, auth)| {
                    Packet::Announce(AnnounceRepr {
                        session,
                        control,
                        unit_size,
                        units_per_block: upb,
                        max_parity: mp,
                        stripes,
                        object_count: misc.0,
                        total_bytes: misc.1,
                        manifest_len: ml,
                        manifest_hash: mh,
                        group_size: misc.2,
                        grtt_us: misc.3,
                        pass_object: ObjectId(misc.0 ^ 5),
                        pass_block: BlockIndex(misc.2 ^ 9),
                        timestamp: misc.3 ^ 1,
                        issued: auth.0,
                        statement_sig: auth.1,
                        announce_sig: auth.2,
                    })
                }
            ),
        (s.clone(), 0u32..1000, 1usize..40).prop_map(|(session, offset, n)| {
            Packet::Manifest(ManifestChunkRepr {
                session,
                offset,
                bytes: &[3u8; 40][..n],
            })
        }),
        (s.clone(), any::<u64>(), any::<u64>()).prop_map(|(session, r, cookie)| Packet::Join(
            JoinRepr {
                session,
                receiver: ReceiverId(r),
                cookie
            }
        )),
        (s.clone(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
            |(session, r, row, cookie)| Packet::Accept(AcceptRepr {
                session,
                receiver: ReceiverId(r),
                row,
                cookie
            })
        ),
        (s.clone(), any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
            |(session, r, f, cookie)| Packet::Leave(LeaveRepr {
                session,
                receiver: ReceiverId(r),
                cookie,
                reason: if f {
                    LeaveReason::Failed
                } else {
                    LeaveReason::Stopped
                },
            })
        ),
        (
            s.clone(),
            any::<u64>(),
            proptest::collection::vec(arb_nack_entry(), 1..8)
        )
            .prop_map(|(session, r, entries)| Packet::Nack(NackRepr {
                session,
                receiver: ReceiverId(r),
                cookie: r.rotate_left(7),
                entries
            })),
        (
            s.clone(),
            any::<(u64, bool, u32, u32, u64)>(),
            (0u32..=1_000_000, 0u32..=1_000_000, 0u32..=1_000_000),
            proptest::collection::vec((any::<u32>(), 0u32..1 << 31, 1u32..1 << 31), 0..10)
        )
            .prop_map(
                |(session, m, (loss, overflow, queue), runs)| Packet::Receipt(ReceiptRepr {
                    session,
                    receiver: ReceiverId(m.0),
                    cookie: m.4 ^ 5,
                    complete: m.1,
                    echo_timestamp: m.2,
                    echo_delay_us: m.3,
                    loss_ppm: loss,
                    overflow_ppm: overflow,
                    queue_ppm: queue,
                    watermark_object: ObjectId(m.2 ^ 3),
                    watermark_block: BlockIndex(m.3 ^ 3),
                    blocks_done: m.4,
                    runs: runs
                        .into_iter()
                        .map(|(o, s, l)| BlockRun {
                            object: ObjectId(o),
                            start: BlockIndex(s),
                            len: l
                        })
                        .collect(),
                })
            ),
        (s.clone(), any::<(u64, u32, u32, u16)>(), 1u32..).prop_map(|(session, m, count)| {
            Packet::Priority(PriorityRepr {
                session,
                receiver: ReceiverId(m.0),
                cookie: m.0 ^ 77,
                object: ObjectId(m.1),
                block: BlockIndex(m.2),
                unit: UnitIndex(m.3),
                count,
            })
        }),
        (s.clone(), 0u8..3, arb_sig()).prop_map(|(session, r, sig)| Packet::Done(
            DoneRepr::Session {
                session,
                reason: [
                    DoneReason::Complete,
                    DoneReason::Deadline,
                    DoneReason::Aborted
                ][r as usize],
                sig,
            }
        )),
        (s.clone(), any::<u64>()).prop_map(|(session, r)| Packet::Done(DoneRepr::Receiver {
            session,
            receiver: ReceiverId(r)
        })),
        (
            s.clone(),
            any::<(u64, u32, u16)>(),
            proptest::collection::vec(arb_addr(), 0..=MAX_PLAN_NEXTS),
            proptest::collection::vec(arb_addr(), 0..=MAX_PLAN_PEERS)
        )
            .prop_map(|(session, m, nexts, peers)| Packet::Plan(PlanRepr {
                session,
                receiver: ReceiverId(m.0),
                epoch: m.1,
                zone: m.2,
                nexts,
                peers,
            })),
        (s.clone(), any::<u64>(), any::<u16>()).prop_map(|(session, r, zone)| Packet::Solicit(
            SolicitRepr {
                session,
                receiver: ReceiverId(r),
                cookie: r ^ 1,
                zone
            }
        )),
        (
            s,
            any::<(u32, u32)>(),
            proptest::collection::btree_set(0u16..XOR_NONE, 2..=XOR_WIDTH),
            0u32..40
        )
            .prop_map(|(session, (o, b), set, i)| {
                let mut units = [XOR_NONE; XOR_WIDTH];
                for (slot, u) in units.iter_mut().zip(set) {
                    *slot = u;
                }
                Packet::Xor(
                    XorRepr {
                        session,
                        object: ObjectId(o),
                        block: BlockIndex(b),
                        units,
                    },
                    &[9u8; 41][..1 + (i % 40) as usize],
                )
            }),
    ]
}

fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        (1u16..200).prop_map(|u| u * 2),
        1u16..64,
        proptest::collection::vec(("[a-z]{1,8}(/[a-z0-9._-]{1,8}){0,2}", 0u64..20_000), 0..5),
    )
        .prop_map(|(unit_size, units_per_block, objs)| {
            let bs = u64::from(unit_size) * u64::from(units_per_block);
            Manifest {
                unit_size,
                units_per_block,
                objects: objs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, size))| {
                        let name = if name.split('/').any(|c| c == "." || c == "..") {
                            format!("{i}-x")
                        } else {
                            format!("{i}-{name}")
                        };
                        ObjectEntry {
                            name,
                            size,
                            hash: [size as u8; 32],
                            block_hashes: (0..size.div_ceil(bs)).map(|i| [i as u8; 32]).collect(),
                        }
                    })
                    .collect(),
            }
        })
}

proptest! {
    #[test]
    fn packet_round_trip(p in arb_packet()) {
        let mut buf = vec![0u8; p.buffer_len()];
        let n = p.emit(&mut buf).unwrap();
        prop_assert_eq!(n, p.buffer_len());
        prop_assert_eq!(Packet::parse(&buf[..n]).unwrap(), p);
    }

    #[test]
    fn emit_into_short_buffer_fails_cleanly(p in arb_packet(), cut in 0usize..64) {
        let len = p.buffer_len().saturating_sub(cut + 1);
        let mut buf = vec![0u8; len];
        prop_assert_eq!(p.emit(&mut buf), Err(WireError::Truncated));
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Packet::parse(&bytes);
        let _ = UnitPacket::new_checked(&bytes[..]);
        let _ = Manifest::parse(&bytes);
    }

    #[test]
    fn parse_never_panics_after_valid_header(kind in 1u8..=14, flags in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = vec![0x42, 0x43, VERSION, kind, flags & !FLAG_TAGGED, 0, 1, 2, 3, 4];
        bytes.extend_from_slice(&tail);
        let _ = Packet::parse(&bytes);
    }

    #[test]
    fn truncated_packets_are_rejected(p in arb_packet(), cut in 1usize..16) {
        let mut buf = vec![0u8; p.buffer_len()];
        let n = p.emit(&mut buf).unwrap();
        let short = n.saturating_sub(cut);
        // A shorter unit is still a valid (shorter) unit as long as a payload byte remains.
        let still_valid = match p {
            Packet::Unit(..) | Packet::Xor(..) => short > UNIT_HEADER_LEN,
            Packet::Manifest(..) => short > HEADER_LEN + 4,
            _ => false,
        };
        if !still_valid {
            prop_assert!(Packet::parse(&buf[..short]).is_err());
        }
    }

    #[test]
    fn copy_flags_survive_a_rewrite(p in arb_packet(), zone in any::<bool>(), next in any::<bool>()) {
        let mut buf = vec![0u8; p.buffer_len()];
        let n = p.emit(&mut buf).unwrap();
        let copy = CopyFlags { zone, next };
        match &p {
            Packet::Unit(h, payload) => {
                set_copy_flags(&mut buf[..n], copy).unwrap();
                let u = UnitPacket::new_checked(&buf[..n]).unwrap();
                prop_assert_eq!(u.copy_flags(), copy);
                prop_assert_eq!(u.is_repair(), h.repair);
                // Everything else reads as before.
                prop_assert_eq!(Packet::parse(&buf[..n]).unwrap(), Packet::Unit(*h, payload));
                set_copy_flags(&mut buf[..n], CopyFlags::NONE).unwrap();
                prop_assert_eq!(Packet::parse(&buf[..n]).unwrap(), p.clone());
            }
            _ => {
                let before = buf.clone();
                prop_assert!(set_copy_flags(&mut buf[..n], copy).is_err());
                prop_assert_eq!(buf, before);
            }
        }
    }

    #[test]
    fn manifest_round_trip(m in arb_manifest()) {
        let bytes = m.emit().unwrap();
        prop_assert_eq!(Manifest::parse(&bytes).unwrap(), m);
    }

    #[test]
    fn corrupted_manifest_never_panics(m in arb_manifest(), at in any::<usize>(), v in any::<u8>()) {
        let mut bytes = m.emit().unwrap();
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        let _ = Manifest::parse(&bytes);
    }
}

#[test]
fn unit_view_reads_fields() {
    let h = UnitHeaderRepr {
        session: SessionId(9),
        parity: true,
        repair: false,
        object: ObjectId(1),
        block: BlockIndex(70_000),
        index: 3,
        round_end: 5,
        timestamp: 1234,
    };
    let mut buf = [0u8; UNIT_HEADER_LEN + 4];
    h.emit(&mut buf).unwrap();
    buf[UNIT_HEADER_LEN..].copy_from_slice(b"abcd");
    let p = UnitPacket::new_checked(&buf[..]).unwrap();
    assert_eq!(UnitHeaderRepr::from_packet(&p), h);
    assert_eq!(p.payload(), b"abcd");
}

#[test]
fn parity_index_past_round_end_is_malformed() {
    let mut buf = [0u8; UNIT_HEADER_LEN + 2];
    UnitHeaderRepr {
        session: SessionId(1),
        parity: true,
        repair: false,
        object: ObjectId(0),
        block: BlockIndex(0),
        index: 5,
        round_end: 5,
        timestamp: 0,
    }
    .emit(&mut buf)
    .unwrap();
    assert_eq!(
        UnitPacket::new_checked(&buf[..]).unwrap_err(),
        WireError::Malformed
    );
}

#[test]
fn duplicate_or_nested_names_are_rejected() {
    let entry = |name: &str| ObjectEntry {
        name: name.into(),
        size: 0,
        hash: [0; 32],
        block_hashes: vec![],
    };
    for names in [vec!["a", "a"], vec!["a", "a/b"], vec!["d/x", "d"]] {
        let m = Manifest {
            unit_size: 2,
            units_per_block: 1,
            objects: names.iter().map(|n| entry(n)).collect(),
        };
        let bytes = m.emit().unwrap();
        assert_eq!(
            Manifest::parse(&bytes),
            Err(WireError::Malformed),
            "{names:?}"
        );
    }
}

#[test]
fn unsafe_names_are_rejected() {
    for bad in [
        "",
        "/etc/passwd",
        "a/../b",
        "..",
        "a//b",
        "./a",
        "a\\b",
        "a\0b",
    ] {
        assert!(!manifest::valid_name(bad), "{bad:?}");
    }
    for good in ["a", "dir/file.bin", "x/y/z", ".hidden"] {
        assert!(manifest::valid_name(good), "{good:?}");
    }
}

#[test]
fn header_checks() {
    assert_eq!(Header::parse(&[]), Err(WireError::Truncated));
    assert_eq!(
        Header::parse(&[0, 0, 1, 1, 0, 0, 0, 0, 0, 0]),
        Err(WireError::BadMagic)
    );
    assert_eq!(
        Header::parse(&[0x42, 0x43, 1, 1, 0, 0, 0, 0, 0, 0]),
        Err(WireError::BadVersion)
    );
    assert_eq!(
        Header::parse(&[0x42, 0x43, VERSION, 99, 0, 0, 0, 0, 0, 0]),
        Err(WireError::UnknownKind)
    );
    assert_eq!(
        Header::parse(&[0x42, 0x43, VERSION, 1, FLAG_TAGGED, 0, 0, 0, 0, 0]),
        Err(WireError::Malformed)
    );
}

#[test]
fn plans_are_bounded_and_name_unicast_peers() {
    let peer = SocketAddr::from(([10, 0, 0, 1], 9000));
    let mut plan = PlanRepr {
        session: SessionId(3),
        receiver: ReceiverId(7),
        epoch: 1,
        zone: 2,
        nexts: vec![peer; MAX_PLAN_NEXTS],
        peers: vec![peer; MAX_PLAN_PEERS],
    };
    let p = Packet::Plan(plan.clone());
    assert!(
        p.buffer_len() <= 1500 - 28,
        "a full plan must fit one 1500-byte MTU"
    );
    let mut buf = vec![0u8; 4096];
    let n = p.emit(&mut buf).unwrap();
    assert_eq!(Packet::parse(&buf[..n]).unwrap(), p);
    // One peer too many is refused on both sides.
    plan.peers.push(peer);
    assert_eq!(
        Packet::Plan(plan.clone()).emit(&mut buf),
        Err(WireError::Malformed)
    );
    let count_at = n - MAX_PLAN_PEERS * 19 - 2;
    buf[count_at..count_at + 2].copy_from_slice(&(MAX_PLAN_PEERS as u16 + 1).to_be_bytes());
    let mut long = buf[..n].to_vec();
    long.extend_from_slice(&buf[n - 19..n]);
    assert_eq!(Packet::parse(&long), Err(WireError::Malformed));
    // So is one next too many.
    plan.peers.pop();
    plan.nexts.push(peer);
    assert_eq!(
        Packet::Plan(plan.clone()).emit(&mut buf),
        Err(WireError::Malformed)
    );
    plan.nexts.pop();
    let n = Packet::Plan(plan.clone()).emit(&mut buf).unwrap();
    buf[24] = MAX_PLAN_NEXTS as u8 + 1;
    assert_eq!(Packet::parse(&buf[..n]), Err(WireError::Malformed));
    // A plan with one next is laid out as before the tree (has_next = 1, then the address).
    plan.nexts = vec![peer];
    let n = Packet::Plan(plan.clone()).emit(&mut buf).unwrap();
    assert_eq!((buf[24], n), (1, 27 + 19 * (1 + MAX_PLAN_PEERS)));
    // A multicast or unspecified peer is refused.
    for bad in ["239.255.0.1:9000", "0.0.0.0:9000", "10.0.0.1:0"] {
        plan.peers = vec![bad.parse().unwrap()];
        assert_eq!(
            Packet::Plan(plan.clone()).emit(&mut buf),
            Err(WireError::Malformed),
            "{bad}"
        );
    }
}

#[test]
fn copy_flags_only_on_units() {
    // A join with a copy flag set is malformed; a parity unit may carry copy flags but not
    // the repair flag.
    let mut buf = [0u8; 64];
    let n = Packet::Join(JoinRepr {
        session: SessionId(1),
        receiver: ReceiverId(2),
        cookie: 0,
    })
    .emit(&mut buf)
    .unwrap();
    buf[4] = FLAG_COPY_ZONE;
    assert_eq!(Packet::parse(&buf[..n]), Err(WireError::Malformed));
    let mut unit = [0u8; UNIT_HEADER_LEN + 2];
    UnitHeaderRepr {
        session: SessionId(1),
        parity: true,
        repair: false,
        object: ObjectId(0),
        block: BlockIndex(0),
        index: 0,
        round_end: 1,
        timestamp: 0,
    }
    .emit(&mut unit)
    .unwrap();
    set_copy_flags(&mut unit, CopyFlags::ALL).unwrap();
    assert_eq!(
        UnitPacket::new_checked(&unit[..]).unwrap().copy_flags(),
        CopyFlags::ALL
    );
    unit[4] |= FLAG_REPAIR;
    assert_eq!(
        UnitPacket::new_checked(&unit[..]).unwrap_err(),
        WireError::Malformed
    );
}

#[test]
fn xor_unit_lists_must_be_two_to_four_ascending() {
    let emit = |units: [u16; XOR_WIDTH]| {
        let x = XorRepr {
            session: SessionId(7),
            object: ObjectId(1),
            block: BlockIndex(2),
            units,
        };
        let mut buf = [0u8; 64];
        let n = x.emit(&mut buf).unwrap();
        assert_eq!(n, UNIT_HEADER_LEN, "same header length as a unit");
        buf[n] = 0xAB;
        Packet::parse(&buf[..n + 1]).map(|p| match p {
            Packet::Xor(x, payload) => (x.iter().collect::<Vec<_>>(), payload.to_vec()),
            other => panic!("parsed as {other:?}"),
        })
    };
    let n = XOR_NONE;
    assert_eq!(emit([3, 9, n, n]), Ok((vec![3, 9], vec![0xAB])));
    assert!(emit([0, 1, 2, 3]).is_ok());
    for bad in [
        [3, n, n, n],
        [9, 3, n, n],
        [3, 3, n, n],
        [3, n, 9, n],
        [n, n, n, n],
    ] {
        assert_eq!(emit(bad), Err(WireError::Malformed), "{bad:?}");
    }
    // A header with no payload is truncated.
    let mut buf = [0u8; UNIT_HEADER_LEN];
    let x = XorRepr {
        session: SessionId(7),
        object: ObjectId(1),
        block: BlockIndex(2),
        units: [1, 2, n, n],
    };
    x.emit(&mut buf).unwrap();
    assert_eq!(Packet::parse(&buf), Err(WireError::Truncated));
}

#[test]
fn version_1_packets_are_refused() {
    let mut buf = vec![0u8; 64];
    let n = Packet::Join(JoinRepr {
        session: SessionId(1),
        receiver: ReceiverId(2),
        cookie: 3,
    })
    .emit(&mut buf)
    .unwrap();
    assert_eq!(buf[2], VERSION);
    buf[2] = 1;
    assert_eq!(Packet::parse(&buf[..n]), Err(WireError::BadVersion));
}

#[test]
fn an_announce_names_at_most_max_stripes_and_known_auth_bits() {
    let a = AnnounceRepr {
        session: SessionId(1),
        control: SocketAddr::from(([127, 0, 0, 1], 9)),
        unit_size: 8,
        units_per_block: 4,
        max_parity: 4,
        stripes: MAX_STRIPES as u16,
        object_count: 1,
        total_bytes: 64,
        manifest_len: 100,
        manifest_hash: [0; 32],
        group_size: 1,
        grtt_us: 1,
        pass_object: ObjectId(0),
        pass_block: BlockIndex(0),
        timestamp: 0,
        issued: 0,
        statement_sig: None,
        announce_sig: None,
    };
    let mut buf = vec![0u8; 512];
    let n = Packet::Announce(a.clone()).emit(&mut buf).unwrap();
    assert!(Packet::parse(&buf[..n]).is_ok());
    // stripes is at offset 35.
    buf[35..37].copy_from_slice(&(MAX_STRIPES as u16 + 1).to_be_bytes());
    assert_eq!(Packet::parse(&buf[..n]), Err(WireError::Malformed));
    let n = Packet::Announce(a).emit(&mut buf).unwrap();
    // The auth byte is the last: an unknown bit is malformed.
    buf[n - 1] = 0x04;
    assert_eq!(Packet::parse(&buf[..n]), Err(WireError::Malformed));
}
