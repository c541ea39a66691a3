//! `?rendition=auto`: the critical rendition for a client whose measured delivery rate is
//! below the full rendition's bitrate, the full one otherwise.
//!
//! **Measured**: after each response body of at least [`MIN_SAMPLE_BYTES`] (or a whole
//! object), the connection waits until the kernel's send queue has drained (`TCP_INFO`:
//! nothing unacknowledged, nothing unsent; polled every few milliseconds, bounded), then
//! takes the bytes the client acknowledged during the response (`tcpi_bytes_acked`) over the
//! time since the body started. That is the rate the client actually took the bytes at,
//! whatever held it back (its link, its reading, the fill), and not the rate the kernel
//! accepted them at (a send buffer swallows a short response at once). The latest sample is
//! kept per client address.
//!
//! **Decided per response, at its start**, never in the middle of one: a response carries a
//! `Content-Length` and one content, so a switch is a new request. A response that starts at
//! byte 0 is decided afresh (critical when the client's latest sample is below the full
//! rendition's bitrate, full when it is not or there is no sample yet); a `Range` request
//! that starts later stays on the rendition that client was last given for that name, so a
//! player's seeks never mix the bytes of two renditions.

pub use blockcast_io::os::{tcp_delivery, TcpDelivery};
use std::collections::HashMap;
use std::net::{IpAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Responses shorter than this (unless they are a whole object) give no sample: over a few
/// round trips, a connection's slow start says little about its rate.
pub const MIN_SAMPLE_BYTES: u64 = 64 << 10;

/// Clients remembered; past this the oldest sample is forgotten.
const MAX_PEERS: usize = 4096;

/// What the edge knows of one client address.
#[derive(Debug, Default, Clone)]
struct Peer {
    /// The latest delivery rate, bytes per second, and when it was taken.
    rate: Option<(f64, Instant)>,
    /// The rendition given to this client for each name (true: critical) by `auto`.
    chosen: HashMap<String, bool>,
}

/// The clients' measured rates and the renditions `auto` gave them.
#[derive(Debug, Default)]
pub struct PeerRates {
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

impl PeerRates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a delivery rate measured for `ip`.
    pub fn record(&self, ip: IpAddr, bytes_per_sec: f64) {
        let mut peers = self.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            let oldest = peers
                .iter()
                .min_by_key(|(_, p)| p.rate.map(|(_, at)| at))
                .map(|(ip, _)| *ip);
            if let Some(o) = oldest {
                peers.remove(&o);
            }
        }
        peers.entry(ip).or_default().rate = Some((bytes_per_sec, Instant::now()));
    }

    /// The latest delivery rate measured for `ip`, bytes per second.
    pub fn rate(&self, ip: IpAddr) -> Option<f64> {
        self.lock().get(&ip).and_then(|p| p.rate.map(|(r, _)| r))
    }

    /// Every client address with a figure: (address, bytes per second, seconds since taken).
    pub fn measured(&self) -> Vec<(IpAddr, f64, f64)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(ip, p)| p.rate.map(|(r, at)| (*ip, r, at.elapsed().as_secs_f64())))
            .collect();
        v.sort_by_key(|(ip, _, _)| *ip);
        v
    }

    /// The rendition `auto` gave `ip` for `name` last (true: critical).
    pub fn chosen(&self, ip: IpAddr, name: &str) -> Option<bool> {
        self.lock()
            .get(&ip)
            .and_then(|p| p.chosen.get(name).copied())
    }

    pub fn choose(&self, ip: IpAddr, name: &str, critical: bool) {
        self.lock()
            .entry(ip)
            .or_default()
            .chosen
            .insert(name.to_owned(), critical);
    }
}

/// Waits (up to `limit`) until everything written to `stream` is acknowledged, then returns
/// the rate the bytes acknowledged since `before` (taken at `started`) were delivered at,
/// in bytes per second.
pub fn delivery_rate(
    stream: &TcpStream,
    before: TcpDelivery,
    started: Instant,
    limit: Duration,
) -> Option<f64> {
    let give_up = Instant::now() + limit;
    loop {
        let now = tcp_delivery(stream)?;
        let drained = now.unacked == 0 && now.notsent == 0;
        if drained || Instant::now() >= give_up {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let acked = now.bytes_acked.saturating_sub(before.bytes_acked);
            return Some(acked as f64 / secs);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bitrate of a transport stream, bytes per second: its size over the span of its first
/// PCR-carrying PID's clock (first to last PCR), fed in chunks of any size.
#[derive(Debug, Default)]
pub struct TsBitrate {
    carry: Vec<u8>,
    pid: Option<u16>,
    first: Option<u64>,
    last: Option<u64>,
    bytes: u64,
    broken: bool,
}

impl TsBitrate {
    pub fn push(&mut self, chunk: &[u8]) {
        use blockcast_edge::ts::{TsPacket, PACKET_LEN};
        self.bytes += chunk.len() as u64;
        if self.broken {
            return;
        }
        self.carry.extend_from_slice(chunk);
        let whole = self.carry.len() / PACKET_LEN * PACKET_LEN;
        for p in self.carry[..whole].chunks_exact(PACKET_LEN) {
            let Ok(bytes) = <&[u8; PACKET_LEN]>::try_from(p) else {
                continue;
            };
            let Ok(packet) = TsPacket::new_checked(bytes) else {
                self.broken = true;
                break;
            };
            let Some(pcr) = packet.pcr() else { continue };
            if *self.pid.get_or_insert(packet.pid()) != packet.pid() {
                continue;
            }
            // 33 bits of 90 kHz base, 6 reserved, 9 bits of 27 MHz extension.
            let base = (u64::from(pcr[0]) << 25)
                | (u64::from(pcr[1]) << 17)
                | (u64::from(pcr[2]) << 9)
                | (u64::from(pcr[3]) << 1)
                | (u64::from(pcr[4]) >> 7);
            let ext = (u64::from(pcr[4] & 1) << 8) | u64::from(pcr[5]);
            let at = base * 300 + ext;
            self.first.get_or_insert(at);
            self.last = Some(at);
        }
        self.carry.drain(..whole);
    }

    /// Bytes per second; `None` without two PCRs in order (or for bytes that are not TS).
    pub fn bytes_per_sec(&self) -> Option<f64> {
        let (first, last) = (self.first?, self.last?);
        if self.broken || last <= first {
            return None;
        }
        Some(self.bytes as f64 / ((last - first) as f64 / 27e6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcr_packet(pid: u16, at: u64) -> [u8; 188] {
        let mut p = [0xffu8; 188];
        let (base, ext) = (at / 300, at % 300);
        p[0] = 0x47;
        p[1] = (pid >> 8) as u8 & 0x1f;
        p[2] = pid as u8;
        p[3] = 0x20; // adaptation field only
        p[4] = 183;
        p[5] = 0x10; // PCR flag
        p[6] = (base >> 25) as u8;
        p[7] = (base >> 17) as u8;
        p[8] = (base >> 9) as u8;
        p[9] = (base >> 1) as u8;
        p[10] = ((base & 1) << 7) as u8 | 0x7e | ((ext >> 8) as u8 & 1);
        p[11] = ext as u8;
        p
    }

    #[test]
    fn the_bitrate_is_the_size_over_the_first_pcr_pids_clock() {
        let mut stream = Vec::new();
        // 100 packets over 2 s of PID 0x100's clock; another PID's PCRs do not count.
        for i in 0..100u64 {
            stream.extend_from_slice(&pcr_packet(0x100, 27_000_000 + i * 2 * 27_000_000 / 99));
            stream.extend_from_slice(&pcr_packet(0x101, 0));
        }
        let mut b = TsBitrate::default();
        for chunk in stream.chunks(1000) {
            b.push(chunk);
        }
        let rate = b.bytes_per_sec().unwrap();
        let want = stream.len() as f64 / 2.0;
        assert!((rate - want).abs() < want * 1e-6, "{rate} {want}");
        let mut text = TsBitrate::default();
        text.push(&[b'x'; 4000]);
        assert_eq!(text.bytes_per_sec(), None);
    }

    #[test]
    fn auto_remembers_the_latest_rate_and_the_rendition_per_client_and_name() {
        let r = PeerRates::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(r.rate(ip), None);
        r.record(ip, 5.0);
        r.record(ip, 7.0);
        assert_eq!(r.rate(ip), Some(7.0));
        r.choose(ip, "a.ts", true);
        assert_eq!(r.chosen(ip, "a.ts"), Some(true));
        assert_eq!(r.chosen(ip, "b.ts"), None);
        assert_eq!(r.chosen([10, 0, 0, 2].into(), "a.ts"), None);
    }
}
