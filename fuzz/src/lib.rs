//! Fuzz targets: every parser of untrusted input, and a server and its receivers fed arbitrary
//! datagram sequences with arbitrary time steps. Each target takes any bytes and must not
//! panic, overflow (the long runs build with overflow checks) or allocate without bound; the
//! targets also check what their code promises (a parsed packet emits and parses back to
//! itself; a verified block holds the source's bytes).
//!
//! Two drivers run them: libFuzzer, coverage-guided (`fuzz/libfuzzer`, built on the stable
//! toolchain by `bench/fuzz.sh`), and [`run_cases`], a seeded generator and mutator over the
//! committed corpus (`fuzz/corpus/<target>/`), which `cargo test` runs briefly and
//! `bench/fuzz.sh --cases` runs for millions of cases.

#![forbid(unsafe_code)]

mod session;

use std::path::{Path, PathBuf};

use blockcast_proto::wire::{Manifest, Packet};

pub use session::{lossy_script, sample_manifest, session_datagrams, Side};

/// A fuzz target: any bytes in.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus directory and the libFuzzer binary have the same name).
pub const TARGETS: &[(&str, Target)] = &[
    ("wire", wire),
    ("manifest", manifest),
    ("http", http),
    ("state", state),
    ("receiver", receiver),
    ("sender", sender),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// One datagram of any kind: parsed; if it parses, emitted and parsed back to the same packet.
pub fn wire(data: &[u8]) {
    let Ok(p) = Packet::parse(data) else {
        return;
    };
    let mut buf = vec![0u8; data.len() + 64];
    let n = match &p {
        // A unit's payload follows its header as it came.
        Packet::Unit(h, payload) => h.emit(&mut buf).map(|n| {
            buf[n..n + payload.len()].copy_from_slice(payload);
            n + payload.len()
        }),
        p => p.emit(&mut buf),
    };
    let n = n.unwrap_or_else(|e| panic!("a parsed packet does not emit: {e:?}: {p:?}"));
    let again = Packet::parse(&buf[..n]).expect("an emitted packet parses");
    assert_eq!(again, p, "parse(emit(p)) != p");
}

/// A manifest (as assembled from its chunks): parsed; if it parses, emitted and parsed back.
pub fn manifest(data: &[u8]) {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    let bytes = m.emit().expect("a parsed manifest emits");
    assert_eq!(
        Manifest::parse(&bytes).expect("an emitted manifest parses"),
        m
    );
    for o in &m.objects {
        let n = &o.name;
        assert!(!n.starts_with('/') && !n.contains('\0'), "{n:?}");
        assert!(
            n.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "{n:?}"
        );
    }
}

/// An HTTP request head, its target and its `Range` (against an object of a size the input
/// picks).
pub fn http(data: &[u8]) {
    let (size, head) = match data.split_first_chunk::<8>() {
        Some((s, rest)) => (u64::from_le_bytes(*s) >> (s[0] % 64), rest),
        None => (0, data),
    };
    blockcast_node::http::fuzz_request(head, size);
}

/// A state file under `--out/.blockcast` as a resume reads it. The first byte's low bit says
/// whether to make its header agree with its manifest first (so the input reaches the slots).
pub fn state(data: &[u8]) {
    let Some((flag, rest)) = data.split_first() else {
        return;
    };
    blockcast_node::fuzz_state_file(rest, flag & 1 == 1);
}

/// Receivers fed a session whose datagrams the input delivers, drops, duplicates and
/// corrupts, plus arbitrary datagrams injected to them, with arbitrary time steps.
pub fn receiver(data: &[u8]) {
    session::run(data, Side::Receivers);
}

/// The server fed the same, with arbitrary datagrams injected to it.
pub fn sender(data: &[u8]) {
    session::run(data, Side::Sender);
}

/// What [`run_cases`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaseStats {
    pub cases: u64,
    /// Of them, corpus entries run as they are.
    pub corpus: u64,
    pub bytes: u64,
}

/// The corpus of `name`: every file in `dir/name/`, sorted by name.
pub fn corpus(dir: &Path, name: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(name))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// Runs `target` on every `corpus` entry, then on `cases` inputs made from `seed`: fresh
/// random bytes (a third) or a corpus entry mutated (flipped, overwritten, inserted,
/// removed, cut, spliced with another). Deterministic for a seed; `on_case` sees each input
/// first (to save the one that fails).
pub fn run_cases(
    target: Target,
    corpus: &[Vec<u8>],
    cases: u64,
    seed: u64,
    mut on_case: impl FnMut(&[u8]),
) -> CaseStats {
    let mut stats = CaseStats::default();
    for c in corpus {
        on_case(c);
        target(c);
        stats.corpus += 1;
        stats.bytes += c.len() as u64;
    }
    let mut rng = Rng(seed.max(1));
    let mut input = Vec::new();
    for _ in 0..cases {
        make_input(&mut rng, corpus, &mut input);
        on_case(&input);
        target(&input);
        stats.cases += 1;
        stats.bytes += input.len() as u64;
    }
    stats.cases += stats.corpus;
    stats
}

/// The generator: xorshift64*, enough to spread inputs; not for keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Longest input the generator makes.
const MAX_INPUT: usize = 4096;

fn make_input(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    input.clear();
    if corpus.is_empty() || rng.below(3) == 0 {
        let longest = MAX_INPUT.min(1 << rng.below(13));
        let len = rng.below(longest + 1);
        input.extend((0..len).map(|_| rng.next() as u8));
        return;
    }
    input.extend_from_slice(&corpus[rng.below(corpus.len())]);
    for _ in 0..1 + rng.below(8) {
        mutate(rng, corpus, input);
    }
    input.truncate(MAX_INPUT * 2);
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    let at = rng.below(input.len() + 1);
    match rng.below(7) {
        0 if at < input.len() => input[at] ^= 1 << rng.below(8),
        1 if at < input.len() => input[at] = rng.next() as u8,
        // An interesting value where multi-byte fields are: all ones, zero, a top bit.
        2 if at + 4 <= input.len() => {
            let v = [[0xff; 4], [0; 4], [0x80, 0, 0, 0], [0x7f, 0xff, 0xff, 0xff]][rng.below(4)];
            input[at..at + 4].copy_from_slice(&v);
        }
        3 => {
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        4 if at < input.len() => {
            let end = (at + 1 + rng.below(16)).min(input.len());
            input.drain(at..end);
        }
        5 => input.truncate(at),
        _ => {
            let other = &corpus[rng.below(corpus.len())];
            let from = rng.below(other.len() + 1);
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
    }
}

/// Packets of the kinds the sessions above do not send: a leave, a priority request, a
/// solicit (split mode) and a parity unit.
fn other_kinds() -> Vec<Vec<u8>> {
    use blockcast_proto::wire::{
        BlockIndex, LeaveReason, LeaveRepr, ObjectId, PriorityRepr, ReceiverId, SessionId,
        SolicitRepr, UnitHeaderRepr, UnitIndex,
    };
    let (session, receiver, cookie) = (SessionId(9), ReceiverId(100), 0x1234_5678_9abc_def0);
    let packets = [
        Packet::Leave(LeaveRepr {
            session,
            receiver,
            cookie,
            reason: LeaveReason::Stopped,
        }),
        Packet::Priority(PriorityRepr {
            session,
            receiver,
            cookie,
            object: ObjectId(1),
            block: BlockIndex(2),
            unit: UnitIndex(1),
            count: 3,
        }),
        Packet::Solicit(SolicitRepr {
            session,
            receiver,
            cookie,
            zone: 2,
        }),
    ];
    let mut out: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut buf = vec![0u8; 256];
            let n = p.emit(&mut buf).expect("emit");
            buf.truncate(n);
            buf
        })
        .collect();
    let parity = UnitHeaderRepr {
        session,
        parity: true,
        repair: true,
        object: ObjectId(0),
        block: BlockIndex(1),
        index: 4,
        round_end: 6,
        timestamp: 77,
    };
    let mut buf = vec![0x5a; 26 + 64];
    parity.emit(&mut buf).expect("emit");
    out.push(buf);
    out
}

/// The committed corpus directory (`fuzz/corpus`).
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The seed inputs for `name`, made from a real session: the datagrams a clean session
/// sends (every kind a server and a receiver send), the manifest, requests as players send
/// them, a state file's header with the manifest, and session scripts.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let m = sample_manifest().emit().expect("manifest");
    match name {
        "wire" => {
            let mut d = session_datagrams(&[]).0;
            d.extend(session_datagrams(&lossy_script()).0);
            d.extend(other_kinds());
            // One of each kind is enough to start from; keep the first 4 of each.
            d.sort_by_key(|p| p.get(3).copied());
            let mut kept: Vec<Vec<u8>> = Vec::new();
            for p in d {
                if kept.iter().filter(|k| k.get(3) == p.get(3)).count() < 4 && !kept.contains(&p) {
                    kept.push(p);
                }
            }
            kept
        }
        "manifest" => vec![m],
        "http" => [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /dir/b HTTP/1.1\r\nHost: a\r\nRange: bytes=0-99\r\n\r\n",
            "HEAD /a%20b HTTP/1.0\r\nRange: bytes=-5\r\n\r\n",
            "GET /status.json HTTP/1.1\r\nRange: bytes=10-\r\nConnection: close\r\n\r\n",
        ]
        .iter()
        .map(|r| {
            let mut v = 1000u64.to_le_bytes().to_vec();
            v.extend_from_slice(r.as_bytes());
            v
        })
        .collect(),
        "state" => {
            let mut v = vec![1u8];
            let mut head = [0u8; 64];
            head[..8].copy_from_slice(b"BCSTATE\0");
            head[8..12].copy_from_slice(&1u32.to_le_bytes());
            head[16..18].copy_from_slice(&(m.len() as u16).to_le_bytes());
            v.extend_from_slice(&head);
            v.extend_from_slice(&m);
            vec![v]
        }
        // An empty script is a whole clean session; the others add loss and injections.
        "receiver" | "sender" => vec![
            Vec::new(),
            vec![1, 0, 0, 2, 0, 0, 4, 200, 0],
            [0u8, 0, 0, 3, 1, 2, 20]
                .iter()
                .chain(&[0xbc; 20])
                .copied()
                .collect(),
            lossy_script(),
        ],
        _ => Vec::new(),
    }
}
