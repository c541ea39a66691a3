//! A server and two receivers on a virtual network the input controls: each step delivers,
//! drops, duplicates or corrupts a datagram in flight, injects an arbitrary datagram from an
//! address the input picks, or moves the clock. The endpoints are the real sans-IO protocol
//! (`Sender`, `Receiver` with a `MemStore`); every step is bounded, so an input runs in
//! bounded time and memory.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use blockcast_proto::wire::{Manifest, ObjectEntry, ReceiverId, SessionId};
use blockcast_proto::{
    Destination, Endpoint, Geometry, MemStore, Receiver, ReceiverConfig, ReceiverEvent, Sender,
    SenderConfig, SliceSource,
};

/// Which side arbitrary datagrams are injected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Receivers,
    Sender,
}

const UNIT: u16 = 64;
const UNITS: u16 = 4;
const BLOCK: usize = UNIT as usize * UNITS as usize;
/// Steps per input, datagrams in flight, transmits per endpoint per step: the bounds.
const MAX_STEPS: usize = 3_000;
const MAX_IN_FLIGHT: usize = 2_048;
const MAX_POLLS: usize = 256;

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], port))
}

/// The content: two objects, the second in a directory, neither a whole number of blocks.
fn content() -> Vec<u8> {
    (0..5 * BLOCK + 100)
        .map(|i| (i * 31 % 251) as u8 ^ (i >> 8) as u8)
        .collect()
}

/// The manifest of [`content`] (objects "a" and "dir/b").
pub fn sample_manifest() -> Manifest {
    let c = content();
    let (a, b) = c.split_at(3 * BLOCK + 40);
    Manifest {
        unit_size: UNIT,
        units_per_block: UNITS,
        objects: vec![
            ObjectEntry::from_content("a", a, BLOCK),
            ObjectEntry::from_content("dir/b", b, BLOCK),
        ],
    }
}

/// Who a datagram goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Sender,
    Receiver(usize),
}

struct Flight {
    to: To,
    from: SocketAddr,
    bytes: Vec<u8>,
}

struct Net<'a> {
    now: Instant,
    sender: Sender<SliceSource<'a>>,
    receivers: Vec<Receiver<MemStore>>,
    flights: VecDeque<Flight>,
    /// Blocks each receiver said it verified.
    verified: Vec<Vec<(u32, u32)>>,
    /// Every datagram sent, when recording.
    record: Option<Vec<Vec<u8>>>,
    buf: Vec<u8>,
}

const SERVER: u8 = 1;

fn receiver_addr(i: usize) -> SocketAddr {
    addr(10 + i as u8, 7000 + i as u16)
}

impl<'a> Net<'a> {
    fn new(objects: &'a [&'a [u8]], manifest: Manifest) -> Net<'a> {
        let cfg = SenderConfig {
            session: SessionId(9),
            control: addr(SERVER, 6000),
            geometry: Geometry {
                unit_size: UNIT,
                units_per_block: UNITS,
                max_parity: 8,
            },
            rate: 20_000_000,
            min_receivers: 1,
            max_wait: Duration::from_secs(5),
            deadline: Some(Duration::from_secs(30)),
            receiver_timeout: Duration::from_secs(2),
            cookie_key: [7; 32],
            ..SenderConfig::default()
        };
        let source = SliceSource::new(objects.to_vec(), BLOCK);
        let sender = Sender::new(cfg, manifest, source).expect("a valid session");
        let receivers = (0..2)
            .map(|i| {
                let cfg = ReceiverConfig {
                    id: ReceiverId(100 + i),
                    seed: 1 + i,
                    ..ReceiverConfig::default()
                };
                Receiver::new(cfg, MemStore::default())
            })
            .collect();
        Net {
            now: Instant::now(),
            sender,
            receivers,
            flights: VecDeque::new(),
            verified: vec![Vec::new(); 2],
            record: None,
            buf: vec![0u8; 65_536],
        }
    }

    fn deliver(&mut self, f: Flight) {
        match f.to {
            To::Sender => self.sender.handle_datagram(self.now, f.from, &f.bytes),
            To::Receiver(i) => self.receivers[i].handle_datagram(self.now, f.from, &f.bytes),
        }
    }

    /// Where a datagram from `from` to `d` goes.
    fn route(&self, from_sender: bool, d: Destination) -> Vec<To> {
        match d {
            Destination::Group | Destination::Stripe(_) => {
                (0..self.receivers.len()).map(To::Receiver).collect()
            }
            Destination::Peer(a) if a == addr(SERVER, 6000) && !from_sender => vec![To::Sender],
            Destination::Peer(a) => (0..self.receivers.len())
                .filter(|i| receiver_addr(*i) == a)
                .map(To::Receiver)
                .collect(),
        }
    }

    fn queue(&mut self, from: SocketAddr, from_sender: bool, d: Destination, bytes: Vec<u8>) {
        if let Some(r) = &mut self.record {
            r.push(bytes.clone());
        }
        for to in self.route(from_sender, d) {
            if self.flights.len() >= MAX_IN_FLIGHT {
                self.flights.pop_front();
            }
            self.flights.push_back(Flight {
                to,
                from,
                bytes: bytes.clone(),
            });
        }
    }

    /// Timeouts due, then what every endpoint has to send and to say.
    fn pump(&mut self, objects: &[&[u8]]) {
        let now = self.now;
        if self.sender.poll_timeout().is_some_and(|t| t <= now) {
            self.sender.handle_timeout(now);
        }
        for _ in 0..MAX_POLLS {
            let Some(t) = self.sender.poll_transmit(now, &mut self.buf) else {
                break;
            };
            let mut bytes = self.buf[..t.len].to_vec();
            if let Some(p) = t.payload {
                let block = &objects[p.object.0 as usize][p.block.0 as usize * BLOCK..];
                bytes.extend_from_slice(&block[p.offset..p.offset + p.len]);
            }
            self.queue(addr(SERVER, 6000), true, t.destination, bytes);
        }
        while self.sender.poll_event().is_some() {}
        for i in 0..self.receivers.len() {
            let r = &mut self.receivers[i];
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
            let mut out = Vec::new();
            for _ in 0..MAX_POLLS {
                let Some(t) = r.poll_transmit(now, &mut self.buf) else {
                    break;
                };
                out.push((t.destination, self.buf[..t.len].to_vec()));
            }
            while let Some(e) = r.poll_event() {
                if let ReceiverEvent::BlockVerified { object, block } = e {
                    self.verified[i].push((object.0, block.0));
                }
            }
            for (d, bytes) in out {
                self.queue(receiver_addr(i), false, d, bytes);
            }
        }
    }

    /// The earliest deadline of any endpoint.
    fn next_timeout(&self) -> Option<Instant> {
        let r = self.receivers.iter().filter_map(|r| r.poll_timeout());
        r.chain(self.sender.poll_timeout()).min()
    }

    /// One step of the script; `None` when the input is used up and nothing is left to do.
    fn step(&mut self, u: &mut Unstructured<'_>, side: Side) -> arbitrary::Result<()> {
        match u.arbitrary::<u8>()? % 8 {
            // Deliver the datagram at an index (the oldest by default), maybe corrupted.
            0 | 5 | 6 => {
                let at = u.arbitrary::<u8>()? as usize;
                let Some(mut f) = self.flights.remove(at.min(self.flights.len().max(1) - 1)) else {
                    return self.wait();
                };
                if u.arbitrary::<u8>()? % 16 == 15 && !f.bytes.is_empty() {
                    let i = u.arbitrary::<u16>()? as usize % f.bytes.len();
                    f.bytes[i] ^= u.arbitrary::<u8>()?.max(1);
                }
                self.deliver(f);
            }
            1 => {
                let at = u.arbitrary::<u8>()? as usize;
                self.flights.remove(at.min(self.flights.len()));
            }
            2 => {
                let at = u.arbitrary::<u8>()? as usize;
                if let Some(f) = self.flights.get(at.min(self.flights.len().max(1) - 1)) {
                    let copy = Flight {
                        to: f.to,
                        from: f.from,
                        bytes: f.bytes.clone(),
                    };
                    self.flights.push_back(copy);
                }
            }
            3 => self.inject(u, side)?,
            4 => {
                let us = u64::from(u.arbitrary::<u16>()?) << (u.arbitrary::<u8>()? % 8);
                self.now += Duration::from_micros(us);
            }
            _ => return self.wait(),
        }
        Ok(())
    }

    /// An arbitrary datagram to `side`, from the server's, a receiver's or a stranger's address.
    fn inject(&mut self, u: &mut Unstructured<'_>, side: Side) -> arbitrary::Result<()> {
        let from = [
            addr(SERVER, 6000),
            receiver_addr(0),
            receiver_addr(1),
            addr(99, 9),
        ][u.arbitrary::<u8>()? as usize % 4];
        let len = (u.arbitrary::<u16>()? % 1500) as usize;
        let bytes = u.bytes(len.min(u.len()))?.to_vec();
        let to = match side {
            Side::Sender => To::Sender,
            Side::Receivers => To::Receiver(u.arbitrary::<u8>()? as usize % 2),
        };
        self.deliver(Flight { to, from, bytes });
        Ok(())
    }

    /// Nothing to deliver: move the clock to the next deadline (or a second on).
    fn wait(&mut self) -> arbitrary::Result<()> {
        let next = self.next_timeout().filter(|t| *t > self.now);
        self.now = next.unwrap_or(self.now + Duration::from_secs(1));
        Ok(())
    }

    /// Each block a receiver said it verified holds the source's bytes.
    fn check(&self, objects: &[&[u8]]) {
        for (i, blocks) in self.verified.iter().enumerate() {
            let store = self.receivers[i].store();
            for &(o, b) in blocks {
                let start = b as usize * BLOCK;
                let want =
                    &objects[o as usize][start..(start + BLOCK).min(objects[o as usize].len())];
                let got = store.objects[o as usize].get(start..start + want.len());
                assert_eq!(
                    got,
                    Some(want),
                    "receiver {i}: block {o}/{b} verified with other bytes"
                );
            }
        }
    }
}

/// Runs the script `data` (injections to `side`) and checks what was verified.
pub(crate) fn run(data: &[u8], side: Side) {
    let c = content();
    let (a, b) = c.split_at(3 * BLOCK + 40);
    let objects = [a, b];
    let mut net = Net::new(&objects, sample_manifest());
    script(&mut net, &objects, data, side);
    net.check(&objects);
}

fn script(net: &mut Net<'_>, objects: &[&[u8]], data: &[u8], side: Side) {
    let mut u = Unstructured::new(data);
    net.pump(objects);
    for _ in 0..MAX_STEPS {
        if net.step(&mut u, side).is_err() {
            break;
        }
        net.pump(objects);
        let done = net.sender.is_finished() && net.receivers.iter().all(|r| r.is_finished());
        if done && u.is_empty() {
            break;
        }
    }
}

/// Every datagram a session sends under `script` (the empty script: a clean session), and
/// how many blocks the receivers verified: the wire corpus.
pub fn session_datagrams(script_bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let c = content();
    let (a, b) = c.split_at(3 * BLOCK + 40);
    let objects = [a, b];
    let mut net = Net::new(&objects, sample_manifest());
    net.record = Some(Vec::new());
    script(&mut net, &objects, script_bytes, Side::Receivers);
    net.check(&objects);
    let verified = net.verified.iter().map(Vec::len).sum();
    (net.record.take().unwrap_or_default(), verified)
}

/// A script that loses about one datagram in five, at varying places (repairs, NACKs).
pub fn lossy_script() -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..400u32 {
        s.extend_from_slice(&[1, (i * 7 % 11) as u8]);
        for _ in 0..3 + i % 4 {
            s.extend_from_slice(&[0, 0, 0]);
        }
    }
    s
}
