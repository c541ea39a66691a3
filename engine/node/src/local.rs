//! A whole session inside one process (the demo and the loopback benchmark): a server and
//! receivers as threads, plus a deterministic sample to send.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::{
    receive, serve, NodeError, ReceiveConfig, ReceiveSummary, ServeConfig, ServeProgress,
    ServeSummary,
};

/// Writes `size` pseudo-random bytes from `seed` (the same bytes for the same seed).
pub fn write_sample(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// Receivers for a local session: one per output path, on `group` through `iface`, with a
/// 32 MiB receive buffer, one receive thread, nothing played or served, ids `id_base + i`.
pub fn local_receivers(
    group: std::net::SocketAddrV4,
    iface: std::net::Ipv4Addr,
    outs: &[std::path::PathBuf],
    timeout: std::time::Duration,
    id_base: u64,
) -> Vec<ReceiveConfig> {
    outs.iter()
        .enumerate()
        .map(|(i, o)| ReceiveConfig {
            group,
            iface,
            out: o.clone(),
            timeout,
            rcvbuf: 32 << 20,
            id: id_base + i as u64,
            play: None,
            start_at: None,
            http: None,
            fallback: Vec::new(),
            failover_after: std::time::Duration::from_secs(3),
            split: None,
            threads: 1,
            trust: Vec::new(),
            secret: None,
            expect: None,
            preallocate: true,
            verify_existing: false,
            overwrite: false,
            block_buffers: crate::DEFAULT_BLOCK_BUFFER_BYTES,
            datapath: crate::Datapath::Socket,
        })
        .collect()
}

/// What a local session did: the server's result and each receiver's, in order.
pub struct LocalRun {
    pub served: Result<ServeSummary, NodeError>,
    pub received: Vec<Result<ReceiveSummary, NodeError>>,
}

/// Runs one server and the given receivers as threads of this process until all end.
pub fn run_local(
    server: &ServeConfig,
    receivers: &[ReceiveConfig],
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ServeProgress),
) -> LocalRun {
    std::thread::scope(|s| {
        let handles: Vec<_> = receivers
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                std::thread::Builder::new()
                    .name(format!("bc-recv-{i}"))
                    .spawn_scoped(s, move || receive(cfg, stop, &mut |_| {}))
            })
            .collect();
        let served = serve(server, stop, progress);
        let received = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(NodeError::panicked("a receiver thread"))),
                Err(e) => Err(NodeError::spawn("a receiver thread", e)),
            })
            .collect();
        LocalRun { served, received }
    })
}

/// The machine's CPU time so far, in clock ticks, from the aggregate `cpu` line of
/// /proc/stat: (steal, total from user to steal). Steal is the time the hypervisor gave this
/// guest's CPUs to others: on a shared host a slow run with much of it is the host's doing.
/// `None` where /proc/stat cannot be read.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 8).then(|| (f[7], f.iter().sum()))
}

/// Per cent of the machine's CPU time the hypervisor took between two [`cpu_ticks`] readings.
pub fn steal_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            100.0 * s1.saturating_sub(s0) as f64 / (t1 - t0) as f64
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_from_the_cpu_line() {
        let a = "cpu  100 0 50 800 10 0 10 30 0 0\ncpu0 50 0 25 400 5 0 5 15 0 0\n";
        let b = "cpu  200 0 100 1500 20 0 20 160 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_cpu_ticks(a), Some((30, 1000)));
        assert_eq!(parse_cpu_ticks(b), Some((160, 2000)));
        assert_eq!(steal_pct(parse_cpu_ticks(a), parse_cpu_ticks(b)), 13.0);
        assert_eq!(parse_cpu_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(steal_pct(None, parse_cpu_ticks(b)), 0.0);
    }
}
