//! A `?rendition=auto` response that starts on the full rendition and switches to the critical
//! one at a key frame when the client turns out slower than the full rendition's bitrate.
//!
//! **How the client is measured.** The response keeps at most [`lead`] bytes written and not
//! acknowledged by the client (`TCP_INFO`: `tcpi_bytes_acked`), so the edge commits no more
//! than about a second of the stream ahead of what the client took, and what it acknowledges
//! over time is its delivery rate. After each chunk (16 KiB) the edge samples the bytes
//! acknowledged; when the samples span [`WINDOW`] and the bytes acknowledged over it are
//! below the bitrate times the window, the client is slow. A stretch in which the edge had
//! nothing to send (a block waited for from the fill) starts the window again: then the
//! client was not the bottleneck.
//!
//! **How it switches** ([`blockcast_edge::ts::seam`]): once slow, the critical rendition is
//! obtained (the origin's, or made here) and its random access points indexed by PTS; the
//! full rendition goes on packet by packet until a video PES packet starts whose PTS is one of
//! them, and from that packet's counterpart in the critical rendition on, the critical
//! rendition follows with its continuity counters renumbered to continue the full one's.
//!
//! The length of such a response is not known when it starts, so it has no `Content-Length`
//! and ends by closing the connection (a body delimited by the close, valid in HTTP/1.0 and
//! 1.1); `X-Rendition: full` and `X-Rendition-Switch: critical` say it may switch.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_edge::cache::Tier;
use blockcast_edge::ts::seam::{Continuity, KeyFrameIndex, TsFollower};
use blockcast_edge::ts::{TsPacket, PACKET_LEN};

use crate::edge::{auto, ClientEntry, Edge, EdgeError, MadeCritical, Meta, Served};

/// The span of acknowledgements a slow verdict needs.
pub const WINDOW: Duration = Duration::from_secs(2);

/// Bytes per write.
const CHUNK: usize = 16 << 10;

/// The most bytes written and not acknowledged: a second of the full rendition, at least
/// 64 KiB (a few round trips of a slow link).
fn lead(bitrate: f64) -> u64 {
    (bitrate as u64).max(64 << 10)
}

/// The least time between two samples of the acknowledgements.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// A fill stall longer than this restarts the rate window.
const STALL: Duration = Duration::from_millis(50);

/// Writes the body in chunks, keeping at most `lead` bytes unacknowledged, and measures the
/// client's delivery rate against `bitrate`.
struct PacedWriter<'a> {
    stream: &'a mut TcpStream,
    buf: Vec<u8>,
    /// `tcpi_bytes_acked` when the response started.
    acked_at_start: u64,
    /// Bytes written to the socket since then (head included).
    written: u64,
    lead: u64,
    bitrate: f64,
    /// (when, bytes acknowledged since the start).
    samples: VecDeque<(Instant, u64)>,
    /// The client measured slower than the bitrate over a whole window.
    slow: bool,
    give_up: Duration,
}

impl PacedWriter<'_> {
    fn acked(&self) -> io::Result<u64> {
        auto::tcp_delivery(self.stream)
            .map(|d| d.bytes_acked.saturating_sub(self.acked_at_start))
            .ok_or_else(|| io::Error::other("TCP_INFO unreadable"))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Waits until the chunk fits within the lead, writes it, samples the acknowledgements.
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.give_up;
        let mut acked = self.acked()?;
        // Polled from 50 µs up to 5 ms: a fast client's acknowledgements come within
        // microseconds, a slow one's need not be asked for a thousand times a second.
        let mut pause = Duration::from_micros(50);
        while self.written + self.buf.len() as u64 > acked + self.lead {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing for too long",
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
            acked = self.acked()?;
            self.sample(acked);
        }
        self.stream.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        self.sample(acked);
        Ok(())
    }

    fn sample(&mut self, acked: u64) {
        let now = Instant::now();
        // At most one sample per 10 ms: a window holds at most 200.
        if self
            .samples
            .back()
            .is_some_and(|&(t, _)| now.duration_since(t) < SAMPLE_EVERY)
        {
            return;
        }
        self.samples.push_back((now, acked));
        // Keep the newest sample at least a window old, and nothing older.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
        if let (Some(&(t0, a0)), Some(&(t1, a1))) = (self.samples.front(), self.samples.back()) {
            let span = t1.duration_since(t0);
            if span >= WINDOW && ((a1 - a0) as f64) < self.bitrate * span.as_secs_f64() {
                self.slow = true;
            }
        }
    }

    /// The sender had nothing to send for a while: the client was not what held it back.
    fn restart_window(&mut self) {
        self.samples.clear();
    }
}

/// Splits a byte stream into whole TS packets, carrying a partial one across calls.
#[derive(Default)]
struct Packets {
    partial: Vec<u8>,
}

impl Packets {
    /// Calls `f` with each whole packet `input` completes, until `f` says stop (`false`):
    /// then returns how much of `input` the packets given to `f` used.
    fn feed(
        &mut self,
        mut input: &[u8],
        f: &mut dyn FnMut(&[u8; PACKET_LEN]) -> io::Result<bool>,
    ) -> io::Result<Option<usize>> {
        let mut used = 0;
        if !self.partial.is_empty() {
            let take = (PACKET_LEN - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            used += take;
            if self.partial.len() < PACKET_LEN {
                return Ok(None);
            }
            let mut p = [0; PACKET_LEN];
            p.copy_from_slice(&self.partial);
            self.partial.clear();
            if !f(&p)? {
                return Ok(Some(used));
            }
        }
        let mut chunks = input.chunks_exact(PACKET_LEN);
        for c in &mut chunks {
            let p: &[u8; PACKET_LEN] = c.try_into().expect("whole packets");
            used += PACKET_LEN;
            if !f(p)? {
                return Ok(Some(used));
            }
        }
        self.partial.extend_from_slice(chunks.remainder());
        Ok(None)
    }
}

/// Where the critical rendition takes over, once known.
struct Switch {
    made: MadeCritical,
    /// PTS of each random access point to its byte offset in the critical rendition.
    points: BTreeMap<u64, u64>,
}

/// Sends the whole of `name` from byte 0 on the full rendition (`meta`, `first` its block 0),
/// switching to the critical rendition at a key frame if the client proves slower than
/// `bitrate` (bytes per second). `before`: `TCP_INFO` taken before the head was written.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_switching(
    edge: &Arc<Edge>,
    stream: &mut TcpStream,
    peer: SocketAddr,
    name: &str,
    meta: &Meta,
    first: Served,
    bitrate: f64,
    before: auto::TcpDelivery,
    head: &str,
    client: &ClientEntry,
) -> io::Result<()> {
    let mut w = PacedWriter {
        stream,
        buf: Vec::with_capacity(CHUNK * 2),
        acked_at_start: before.bytes_acked,
        written: 0,
        lead: lead(bitrate),
        bitrate,
        samples: VecDeque::new(),
        slow: false,
        give_up: edge.config().wait_timeout.max(Duration::from_secs(10)),
    };
    w.write(head.as_bytes())?;
    w.flush_chunk()?;
    let mut follower = TsFollower::default();
    let mut cc = Continuity::default();
    let mut packets = Packets::default();
    // None: not tried yet; Some(None): tried, no switch possible.
    let mut switch: Option<Option<Switch>> = None;
    let mut following = true;
    let mut seam_at: Option<u64> = None;
    let mut next = Some(first);
    let sent_from = |tier: Tier, n: u64| {
        edge.count_sent(tier, n);
        client.bytes.fetch_add(n, Ordering::Relaxed);
    };
    'blocks: for b in 0..meta.block_hashes.len() as u32 {
        let served = match next.take() {
            Some(s) => s,
            None => {
                let asked = Instant::now();
                let s = edge.full_block(name, b).map_err(to_io)?;
                if asked.elapsed() > STALL {
                    w.restart_window();
                }
                s
            }
        };
        if edge.is_stopping() {
            return Err(io::Error::other("the edge is stopping"));
        }
        if !following {
            w.write(&served.bytes)?;
            sent_from(served.tier, served.bytes.len() as u64);
            continue;
        }
        let mut sent = 0u64;
        let stop = packets.feed(&served.bytes, &mut |p| {
            let Ok(packet) = TsPacket::new_checked(p) else {
                // Not a transport stream after all: this and the rest go out as they are.
                following = false;
                w.write(p)?;
                sent += PACKET_LEN as u64;
                return Ok(false);
            };
            if let Some(Some(pts)) = follower.packet(&packet) {
                if w.slow && switch.is_none() {
                    switch = Some(prepare_switch(edge, name));
                }
                if let Some(Some(s)) = &switch {
                    if let Some(&at) = s.points.get(&pts) {
                        seam_at = Some(at);
                        return Ok(false);
                    }
                }
            }
            w.write(p)?;
            cc.sent(&packet);
            sent += PACKET_LEN as u64;
            Ok(true)
        })?;
        sent_from(served.tier, sent);
        if seam_at.is_some() {
            break 'blocks;
        }
        if let Some(used) = stop {
            let rest = &served.bytes[used..];
            w.write(rest)?;
            sent_from(served.tier, rest.len() as u64);
        }
    }
    if let (Some(at), Some(Some(s))) = (seam_at, switch) {
        client
            .switched_at
            .store(client.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        edge.counters
            .rendition_switches
            .fetch_add(1, Ordering::Relaxed);
        edge.rates.choose(peer.ip(), name, true);
        tracing::info!(%peer, object = name, "edge: switched to the critical rendition at a key frame");
        let bs = s.made.meta.block_size.max(1);
        let mut packets = Packets::default();
        for b in (at / bs) as u32..s.made.meta.block_hashes.len() as u32 {
            let served = edge.critical_block(&s.made, b).map_err(to_io)?;
            let from = if u64::from(b) == at / bs {
                (at % bs) as usize
            } else {
                0
            };
            let mut sent = 0u64;
            packets.feed(&served.bytes[from..], &mut |p| {
                let mut p = *p;
                cc.rewrite(&mut p);
                w.write(&p)?;
                sent += PACKET_LEN as u64;
                Ok(true)
            })?;
            sent_from(served.tier, sent);
        }
    } else if !packets.partial.is_empty() {
        // A last partial packet of the full rendition goes out as it is.
        let rest = std::mem::take(&mut packets.partial);
        w.write(&rest)?;
    }
    w.flush_chunk()?;
    w.stream.flush()
}

/// The critical rendition of `name` and its random access points, or `None` when it has
/// none (not a TS, no key frames) or cannot be had.
fn prepare_switch(edge: &Arc<Edge>, name: &str) -> Option<Switch> {
    let made = match edge.critical_made(name) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(
                object = name,
                "edge: no switch to the critical rendition: {e}"
            );
            return None;
        }
    };
    let mut index = KeyFrameIndex::default();
    for b in 0..made.meta.block_hashes.len() as u32 {
        index.push(&edge.critical_block(&made, b).ok()?.bytes);
    }
    let points = index.finish();
    (!points.is_empty()).then_some(Switch { made, points })
}

fn to_io(e: EdgeError) -> io::Error {
    tracing::warn!("edge: {e}; closing the response short");
    io::Error::other(e.to_string())
}
