//! Micro-benchmarks of the hot paths: unit header encode/decode, status bitmaps, parity
//! encode/decode per block size, NACK encode/decode, the in-order verified prefix, what a
//! signed session costs per announce (sign at the server, check at a receiver), and what a
//! closed group costs per unit (seal at the server, open at a receiver: AEGIS-256X4).
//!
//! `cargo bench -p blockcast-bench --bench hot_paths`

use std::hint::black_box;

use blockcast_proto::coding;
use blockcast_proto::wire::{
    BlockIndex, Holes, NackEntry, NackRepr, ObjectId, Packet, ReceiverId, SessionId,
    UnitHeaderRepr, UnitPacket, UNIT_HEADER_LEN,
};
use blockcast_status::{AtomicBitmap, UnitBitmap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn unit_header(c: &mut Criterion) {
    let hdr = UnitHeaderRepr {
        session: SessionId(7),
        parity: false,
        repair: false,
        object: ObjectId(3),
        block: BlockIndex(1234),
        index: 321,
        round_end: 0,
        timestamp: 987_654,
    };
    let mut buf = vec![0u8; UNIT_HEADER_LEN + 1400];
    let mut g = c.benchmark_group("unit_header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("emit", |b| {
        b.iter(|| black_box(&hdr).emit(black_box(&mut buf)).unwrap())
    });
    hdr.emit(&mut buf).unwrap();
    g.bench_function("view_and_read", |b| {
        b.iter(|| {
            let p = UnitPacket::new_checked(black_box(&buf[..])).unwrap();
            (
                p.object(),
                p.block(),
                p.index(),
                p.timestamp(),
                p.payload().len(),
            )
        })
    });
    g.finish();
}

fn bitmaps(c: &mut Criterion) {
    let mut g = c.benchmark_group("bitmaps");
    let n = 749;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("unit_bitmap_set_block", |b| {
        b.iter(|| {
            let mut m = UnitBitmap::new(n);
            for i in 0..n {
                m.set(black_box(i));
            }
            m.is_full()
        })
    });
    let atomic = AtomicBitmap::new(1 << 20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("atomic_bitmap_set", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) & ((1 << 20) - 1);
            atomic.set(black_box(i))
        })
    });
    let mut holes = UnitBitmap::new(n);
    for i in (0..n).filter(|i| i % 97 != 0) {
        holes.set(i);
    }
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("zero_runs_749", |b| {
        b.iter(|| black_box(&holes).zero_runs().count())
    });
    g.finish();
}

fn parity(c: &mut Criterion) {
    let mut g = c.benchmark_group("parity");
    g.sample_size(20);
    for &(k, us) in &[(128u16, 1400u16), (256, 1400), (749, 1400)] {
        let m = 128u16;
        let block: Vec<u8> = (0..usize::from(k) * usize::from(us))
            .map(|i| (i * 31) as u8)
            .collect();
        g.throughput(Throughput::Bytes(block.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", k), &k, |b, &k| {
            b.iter(|| coding::encode_block(black_box(&block), k, m, us).unwrap())
        });
        let parity = coding::encode_block(&block, k, m, us).unwrap();
        let lost: Vec<usize> = vec![1, 5, 9];
        let got: Vec<(u16, &[u8])> = (0..lost.len() as u16)
            .map(|i| {
                (
                    i,
                    &parity[usize::from(i) * usize::from(us)..usize::from(i + 1) * usize::from(us)],
                )
            })
            .collect();
        g.bench_with_input(BenchmarkId::new("decode_3_lost", k), &k, |b, &k| {
            let mut work = block.clone();
            b.iter(|| {
                coding::decode_block(black_box(&mut work), |u| !lost.contains(&u), &got, k, m, us)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn nack(c: &mut Criterion) {
    let n = NackRepr {
        session: SessionId(1),
        receiver: ReceiverId(42),
        cookie: 7,
        entries: (0..40)
            .map(|b| NackEntry {
                object: ObjectId(0),
                block: BlockIndex(b),
                missing: 3,
                parity_seen: 0,
                holes: Holes::Ranges(vec![(5, 1), (200, 2)]),
            })
            .collect(),
    };
    let p = Packet::Nack(n);
    let mut buf = vec![0u8; p.buffer_len()];
    let mut g = c.benchmark_group("nack");
    g.throughput(Throughput::Elements(40));
    g.bench_function("emit_40_blocks", |b| {
        b.iter(|| black_box(&p).emit(&mut buf).unwrap())
    });
    p.emit(&mut buf).unwrap();
    g.bench_function("parse_40_blocks", |b| {
        b.iter(|| Packet::parse(black_box(&buf)).unwrap())
    });
    g.finish();
}

fn in_order_prefix(c: &mut Criterion) {
    // The verified prefix a player follows: the first unverified block of an object.
    let blocks = 1 << 16;
    let bits = AtomicBitmap::new(blocks);
    for i in 0..blocks - 1 {
        bits.set(i);
    }
    let mut g = c.benchmark_group("in_order");
    g.bench_function("prefix_of_65536_blocks", |b| {
        b.iter(|| black_box(&bits).first_zero_from(0))
    });
    g.finish();
}

/// A signed session: the server signs each announce (about 10 per second) and each session
/// Done; a receiver checks the announce's signature (and the statement's, once).
fn signatures(c: &mut Criterion) {
    use blockcast_proto::auth::{Signer, TrustedKeys};
    use blockcast_proto::wire::AnnounceRepr;
    let signer = Signer::from_seed(&[7; 32]);
    let trust = TrustedKeys::new(&[signer.public_key()]).unwrap();
    let mut a = AnnounceRepr {
        session: SessionId(1),
        control: "127.0.0.1:9000".parse().unwrap(),
        unit_size: 1400,
        units_per_block: 749,
        max_parity: 128,
        stripes: 1,
        object_count: 1,
        total_bytes: 1 << 30,
        manifest_len: 32_000,
        manifest_hash: [3; 32],
        group_size: 4,
        grtt_us: 500,
        pass_object: ObjectId(0),
        pass_block: BlockIndex(9),
        timestamp: 1234,
        issued: 1_700_000_000,
        statement_sig: None,
        announce_sig: None,
    };
    a.statement_sig = Some(signer.sign_statement(&a));
    let mut g = c.benchmark_group("signatures");
    g.bench_function("sign_announce", |b| {
        b.iter(|| {
            let mut x = a.clone();
            signer.sign_announce(&mut x);
            black_box(x.announce_sig)
        })
    });
    signer.sign_announce(&mut a);
    g.bench_function("check_announce", |b| {
        b.iter(|| black_box(trust.check_announce(black_box(&a))))
    });
    g.bench_function("check_statement", |b| {
        b.iter(|| black_box(trust.check_statement(black_box(&a))))
    });
    g.finish();
}

/// A closed group's per-datagram work: the server gathers a unit's header and payload into the
/// ring's storage sealed (`seal_into`), a receiver opens it in place. Bytes per second is the
/// per-byte cost; both are per unit of the given size.
fn sealing(c: &mut Criterion) {
    use blockcast_seal::{Opener, Sealer, Secret, TRAILER_LEN};
    let secret = Secret::new([9; 32]);
    let mut g = c.benchmark_group("sealing");
    for unit in [1400usize, 8972] {
        let hdr = UnitHeaderRepr {
            session: SessionId(7),
            parity: false,
            repair: false,
            object: ObjectId(0),
            block: BlockIndex(5),
            index: 3,
            round_end: 0,
            timestamp: 1,
        };
        let mut head = [0u8; UNIT_HEADER_LEN];
        hdr.emit(&mut head).unwrap();
        let payload = vec![0x5a; unit];
        let len = UNIT_HEADER_LEN + unit + TRAILER_LEN;
        let mut out = vec![0u8; len];
        g.throughput(Throughput::Bytes((UNIT_HEADER_LEN + unit) as u64));
        let mut sealer = Sealer::new(&secret, [1; 16]);
        g.bench_with_input(BenchmarkId::new("seal_into", unit), &unit, |b, _| {
            b.iter(|| {
                sealer
                    .seal_into(&head, black_box(&payload), &mut out)
                    .unwrap()
            })
        });
        // Opening decrypts in place: each iteration opens a fresh copy of a sealed unit (the
        // copy is measured too, as `copy` below, to be taken off).
        let sealed = out.clone();
        let mut opener = Opener::new(&secret);
        let mut work = sealed.clone();
        g.bench_with_input(BenchmarkId::new("open_in_place", unit), &unit, |b, _| {
            b.iter(|| {
                work.copy_from_slice(&sealed);
                opener.open_in_place(black_box(&mut work)).unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("copy", unit), &unit, |b, _| {
            b.iter(|| work.copy_from_slice(black_box(&sealed)))
        });
    }
    g.finish();
}

criterion_group!(
    hot_paths,
    unit_header,
    bitmaps,
    parity,
    nack,
    in_order_prefix,
    signatures,
    sealing
);
criterion_main!(hot_paths);
