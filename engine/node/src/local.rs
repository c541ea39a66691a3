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
