//! The receive thread's part around the protocol core: the user's stop, fail-over between
//! sources, the stripe sockets and their readers, the verify thread's answers, priority asks
//! from the player and the HTTP endpoint, events, progress, and when to stop.

use std::collections::HashMap;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::Scope;
use std::time::{Duration, Instant};

use blockcast_io::xdp::XskBatch;
use blockcast_io::{MulticastReceiver, RecvBatch, GRO_BUFFER_SIZE};
use blockcast_proto::wire::{BlockIndex, LeaveReason, ObjectId, UnitIndex};
use blockcast_proto::{Receiver, ReceiverEvent};

use super::place::Placer;
use super::store::FileStore;
use super::verify::Verifier;
use super::{report, ReceiveConfig, ReceiveProgress};
use crate::driver::{self, Flow, Input, Io};
use crate::published::{Ask, Published};
use crate::stripe_rx::StripeSockets;
use crate::NodeError;

/// Input 0 is the data socket (the group's, or split mode's member socket); input 1, in
/// multicast mode, the control socket.
const DATA: usize = 0;

/// What the host counted, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub complete_at: Option<Instant>,
    pub first_unit: Option<Instant>,
    /// CPU seconds of the helper threads (verify, stripe readers).
    pub helper_cpu: f64,
    pub stripe_datagrams: u64,
    pub forwarded: u64,
    pub forward_dropped: u64,
    /// Units read in two pieces, their payload in a guessed place ([`Placer`]).
    pub parts: u64,
}

pub(crate) struct ReceiveHost<'a, 'scope, 'env> {
    pub cfg: &'a ReceiveConfig,
    pub stop: &'a AtomicBool,
    pub progress: &'a mut dyn FnMut(&ReceiveProgress),
    pub published: &'a Published,
    pub asks: &'a mpsc::Receiver<Ask>,
    pub scope: &'scope Scope<'scope, 'env>,
    pub verifier: Verifier<'scope>,
    /// Split mode: the member socket, to forward copies from.
    pub split_socket: Option<UdpSocket>,
    /// The sources: the group, then the fall-backs.
    pub sources: Vec<SocketAddrV4>,
    pub started: Instant,
    pub latency: hdrhistogram::Histogram<u64>,
    source: usize,
    /// Sockets (and threads) for stripes 1.. of a striped first pass, once announced.
    stripes: Option<StripeSockets<'scope>>,
    heard: bool,
    next_progress: Instant,
    last_packet: Instant,
    /// The current source ended the session before we were complete (fail over if we can).
    source_ended: bool,
    server_gone: bool,
    /// Datagrams came on the data socket this turn.
    got_data: bool,
    published_any: bool,
    /// Priority asks merged: one per block per 200 ms.
    asked: HashMap<(u32, u32), Instant>,
    /// Forged announces and Dones refused so far (logged as they grow).
    refused: (u64, u64),
    tally: Tally,
    /// Guesses where the data socket's next units go, to receive them there.
    placer: Placer,
}

impl<'a, 'scope, 'env> ReceiveHost<'a, 'scope, 'env> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: &'a ReceiveConfig,
        stop: &'a AtomicBool,
        progress: &'a mut dyn FnMut(&ReceiveProgress),
        published: &'a Published,
        asks: &'a mpsc::Receiver<Ask>,
        scope: &'scope Scope<'scope, 'env>,
        verifier: Verifier<'scope>,
        split_socket: Option<UdpSocket>,
        started: Instant,
    ) -> Result<Self, NodeError> {
        Ok(ReceiveHost {
            sources: std::iter::once(cfg.group)
                .chain(cfg.fallback.iter().copied())
                .collect(),
            cfg,
            stop,
            progress,
            published,
            asks,
            scope,
            verifier,
            split_socket,
            started,
            // Microseconds, 1 us .. 1 h, 3 significant digits.
            latency: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| NodeError::Internal(format!("histogram: {e}")))?,
            source: 0,
            stripes: None,
            heard: false,
            next_progress: started,
            last_packet: started,
            source_ended: false,
            server_gone: false,
            got_data: false,
            published_any: false,
            asked: HashMap::new(),
            refused: (0, 0),
            tally: Tally::default(),
            placer: Placer::new(cfg.secret.is_none() && cfg.split.is_none()),
        })
    }

    /// Ends the helper threads (always, whatever the run's result) and returns the tally.
    pub(crate) fn finish(mut self) -> (Tally, hdrhistogram::Histogram<u64>) {
        self.close_stripes();
        self.tally.parts = self.placer.parts;
        self.tally.helper_cpu += self.verifier.finish();
        (self.tally, self.latency)
    }

    fn close_stripes(&mut self) {
        if let Some(s) = self.stripes.take() {
            let (cpu, n) = s.shutdown();
            self.tally.helper_cpu += cpu;
            self.tally.stripe_datagrams += n;
        }
    }

    /// The source went quiet or gave up (a relay whose upstream failed): fail over to the
    /// next one, keeping every block.
    fn fail_over(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        io: &mut Io,
        quiet: bool,
    ) -> Result<(), NodeError> {
        self.source = (self.source + 1) % self.sources.len();
        self.source_ended = false;
        let to = self.sources[self.source];
        if quiet {
            let secs = self.cfg.failover_after.as_secs_f64();
            tracing::warn!("no packet for {secs:.1} s: failing over to {to}");
        } else {
            tracing::warn!("the source ended the session: failing over to {to}");
        }
        let sock = MulticastReceiver::new(to, self.cfg.iface, self.cfg.rcvbuf, true)?;
        // A new socket counts its drops from 0.
        io.replace_input(DATA, Input::new(sock, RecvBatch::new(8, GRO_BUFFER_SIZE)?));
        if io.xdp.take().is_some() {
            // The program takes only the first group's address: the other source's data
            // comes through the new socket.
            tracing::warn!("failing over to {to}: its data is received on the socket path");
        }
        self.close_stripes();
        rx.switch_source(now);
        self.last_packet = now;
        Ok(())
    }

    /// Priority asks from the player and the HTTP endpoint (merged: one per block per 200 ms).
    fn take_asks(&mut self, rx: &mut Receiver<FileStore>, now: Instant) {
        while let Ok(a) = self.asks.try_recv() {
            let key = (a.object, a.block);
            if self
                .asked
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) > Duration::from_millis(200))
            {
                self.asked.insert(key, now);
                rx.request_priority(
                    ObjectId(a.object),
                    BlockIndex(a.block),
                    UnitIndex(0),
                    a.count,
                );
            }
        }
    }

    /// Hands a finished block to the verify thread.
    fn verify(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        object: ObjectId,
        block: BlockIndex,
        expected: [u8; 32],
        rebuild: Option<blockcast_proto::Rebuild>,
    ) {
        let len = rx
            .manifest()
            .and_then(|m| m.block_len(object, block.0))
            .unwrap_or(0);
        let submitted = match rx.store_mut().block_for_verify(object, block, len) {
            Some(at) => self.verifier.submit(object, block, at, expected, rebuild),
            None => false,
        };
        if !submitted {
            rx.store_mut().attempt_over(object, block, None);
            rx.handle_verified(now, object, block, false);
        }
    }

    fn incomplete(rx: &Receiver<FileStore>, why: &'static str) -> NodeError {
        NodeError::Incomplete {
            blocks_done: rx.blocks_done(),
            blocks: rx.total_blocks(),
            why,
        }
    }
}

impl driver::Host<Receiver<FileStore>> for ReceiveHost<'_, '_, '_> {
    fn begin(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        io: &mut Io,
    ) -> Result<Flow, NodeError> {
        if self.stop.load(Ordering::Relaxed) {
            rx.leave(LeaveReason::Stopped);
            io.flush(rx, now)?;
            return Err(NodeError::Interrupted);
        }
        while let Some(v) = self.verifier.try_verdict() {
            // Its buffer back to the pool (the block is in the file, or fetched anew).
            rx.store_mut().attempt_over(v.object, v.block, v.buffer);
            if let Some(source) = v.error {
                // A block (or its rebuilt units) could not be written (a full disk): stop,
                // keeping what is recorded.
                let path = rx
                    .store()
                    .paths()
                    .get(v.object.0 as usize)
                    .cloned()
                    .unwrap_or_else(|| self.cfg.out.clone());
                return Err(NodeError::Output { path, source });
            }
            rx.handle_verified(now, v.object, v.block, v.ok);
        }
        if let Some(e) = rx.store_mut().take_failure() {
            // A block the protocol core verified in the store's own copy could not be
            // written back (it verifies on the verify thread here, so this is not expected).
            return Err(e);
        }
        if let Some(path) = rx.store().damaged() {
            return Err(NodeError::Output {
                path: path.to_path_buf(),
                source: std::io::Error::other(
                    "another program shrank the file while it was being received",
                ),
            });
        }
        self.take_asks(rx, now);
        if io.is_ready(DATA) {
            // How far behind this receiver is, for the server's rate (one getsockopt per
            // turn, before the read, not per datagram).
            if let Some(q) = blockcast_io::receive_queue_ppm(&io.inputs[DATA].fd) {
                rx.note_queue(q);
            }
        }
        let quiet = now.duration_since(self.last_packet) >= self.cfg.failover_after;
        if self.sources.len() > 1
            && self.cfg.split.is_none()
            && self.heard
            && !rx.is_complete()
            && (quiet || self.source_ended)
        {
            self.fail_over(rx, now, io, quiet)?;
        }
        Ok(Flow::Continue)
    }

    fn before_recv(&mut self, rx: &mut Receiver<FileStore>, input: usize, batch: &mut RecvBatch) {
        if input == DATA {
            self.placer.plan(rx, batch);
        }
    }

    fn on_batch(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        input: usize,
        batch: &mut RecvBatch,
        opener: Option<&mut blockcast_seal::Opener>,
    ) -> Result<(), NodeError> {
        self.last_packet = now;
        match (&self.split_socket, input) {
            // Split mode has no closed groups (receive refuses a secret with it).
            (Some(sock), DATA) => {
                let f = super::split::forward_and_handle(rx, batch, sock, now);
                self.tally.forwarded += f.sent;
                self.tally.forward_dropped += f.dropped;
            }
            (_, DATA) if self.placer.enabled() && opener.is_none() => {
                rx.store_mut().stage(batch);
                self.placer.feed(rx, now, batch);
            }
            _ => {
                rx.store_mut().stage(batch);
                driver::feed(rx, now, batch, opener);
            }
        }
        // The units were queued for writing from the batch's buffer: write them before the
        // next `recv` reuses it.
        rx.store_mut().flush(Some(batch))?;
        if input == DATA {
            self.got_data = true;
        }
        Ok(())
    }

    fn on_frames(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        batch: &mut XskBatch<'_>,
        opener: Option<&mut blockcast_seal::Opener>,
    ) -> Result<(), NodeError> {
        self.last_packet = now;
        // As for a socket's batch: units are queued by their place in the frames and written
        // from there before the frames go back to the fill ring.
        rx.store_mut().stage(batch);
        driver::feed_frames(rx, now, batch, opener);
        rx.store_mut().flush(Some(batch))?;
        self.got_data = true;
        Ok(())
    }

    fn extra_fds(&self, fds: &mut Vec<std::os::fd::RawFd>) {
        if let Some(s) = &self.stripes {
            fds.extend(s.fds());
        }
    }

    fn after_inputs(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        io: &mut Io,
        ready: &[bool],
    ) -> Result<(), NodeError> {
        // Stripes 1.. (their readers' batches, or sockets this thread reads itself).
        let striped = match self.stripes.as_mut() {
            Some(st) => {
                let mut opener = io.opener.as_mut();
                let got = st.drain(ready, &mut |b| {
                    rx.store_mut().stage(b);
                    driver::feed(rx, now, b, opener.as_deref_mut());
                    rx.store_mut().flush(Some(b))
                })?;
                rx.note_queue(st.take_queue_ppm());
                got
            }
            None => false,
        };
        if striped {
            self.last_packet = now;
        }
        if (self.got_data || striped) && self.tally.first_unit.is_none() && rx.manifest().is_some()
        {
            self.tally.first_unit = Some(now);
        }
        if self.got_data || striped {
            // What every data socket received and dropped (for the loss reports).
            let (more, more_drops) = self.stripes.as_ref().map_or((0, 0), |s| s.socket_totals());
            let (xdp, xdp_drops) = io
                .xdp
                .as_ref()
                .map_or((0, 0), |x| (x.received(), x.dropped() as u32));
            let batch = &io.inputs[DATA].batch;
            rx.note_socket(
                batch.received() + more + xdp,
                batch
                    .socket_drops()
                    .unwrap_or(0)
                    .wrapping_add(more_drops)
                    .wrapping_add(xdp_drops),
            );
        }
        self.got_data = false;
        // A striped session: open its other stripes' sockets before this turn's packets go
        // out (the join among them), so the first pass finds them joined. With XDP the
        // program takes the stripe ports too (the group is joined once, for every port).
        if self.stripes.is_none() && self.cfg.split.is_none() && io.xdp.is_none() {
            if let Some(n) = rx.announced_stripes().filter(|&n| n > 1) {
                self.stripes = Some(StripeSockets::open(
                    self.scope,
                    self.sources[self.source],
                    self.cfg.iface,
                    self.cfg.rcvbuf,
                    n,
                    self.cfg.threads,
                )?);
            }
        }
        Ok(())
    }

    fn on_event(
        &mut self,
        rx: &mut Receiver<FileStore>,
        now: Instant,
        event: ReceiverEvent,
    ) -> Result<Flow, NodeError> {
        match event {
            ReceiverEvent::ManifestReady => {
                if let (Some(a), Some(session)) = (rx.announce(), rx.session()) {
                    self.published.publish_session(
                        session.0,
                        a.control,
                        (a.issued, a.statement_sig),
                    );
                }
                if let Some(m) = rx.manifest() {
                    self.published.publish_manifest(m, rx.store().paths());
                }
            }
            ReceiverEvent::VerifyBlock {
                object,
                block,
                expected,
                rebuild,
            } => self.verify(rx, now, object, block, expected, rebuild),
            ReceiverEvent::BlockVerified { object, block } => {
                // Block-completion latency: its first unit written -> verified.
                if let Some(Some(t)) = rx
                    .store()
                    .touched
                    .get(object.0 as usize)
                    .and_then(|o| o.get(block.0 as usize))
                {
                    let us = now.saturating_duration_since(*t).as_micros() as u64;
                    let _ = self.latency.record(us.max(1));
                }
                self.published.publish_block(object.0, block.0);
                self.published_any = true;
            }
            ReceiverEvent::Announced { session, .. } => {
                if self.heard {
                    // Another session of the same content (a restarted server): its first
                    // pass may be striped otherwise.
                    tracing::info!(
                        session = session.0,
                        "following a new session of the same content"
                    );
                    if self.stripes.as_ref().map(|s| s.count())
                        != rx.announced_stripes().filter(|&n| n > 1)
                    {
                        self.close_stripes();
                    }
                }
                self.heard = true;
            }
            ReceiverEvent::Complete => self.tally.complete_at = Some(now),
            ReceiverEvent::ServerLost if rx.is_complete() => self.server_gone = true,
            ReceiverEvent::ServerLost => {
                return Err(Self::incomplete(rx, "the server went quiet"));
            }
            ReceiverEvent::SessionEnded {
                complete: false, ..
            } if self.sources.len() > 1 && self.cfg.split.is_none() => self.source_ended = true,
            ReceiverEvent::SessionEnded {
                complete: false, ..
            } => return Err(Self::incomplete(rx, "the server ended the session")),
            ReceiverEvent::StoreFailed(e) => {
                return Err(rx
                    .store_mut()
                    .take_failure()
                    .unwrap_or_else(|| NodeError::Output {
                        path: self.cfg.out.clone(),
                        source: std::io::Error::other(e.0),
                    }))
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn end(&mut self, rx: &mut Receiver<FileStore>, now: Instant) -> Result<Flow, NodeError> {
        let st = rx.stats();
        let refused = (st.forged_announces, st.forged_dones);
        if refused != self.refused && now >= self.next_progress {
            // Said when it grows, at most a few times per second.
            tracing::warn!(
                announces = refused.0,
                dones = refused.1,
                "refused forged packets (unsigned, signed by a key not trusted, a bad signature, or other content than pinned)"
            );
            self.refused = refused;
        }
        if std::mem::take(&mut self.published_any) {
            self.published.notify();
        }
        if !self.heard && now.duration_since(self.started) >= self.cfg.timeout {
            return Err(NodeError::NoServer {
                waited_secs: self.cfg.timeout.as_secs_f64(),
                refused: rx.stats().forged_announces,
            });
        }
        let complete_at = self.tally.complete_at;
        if now >= self.next_progress || complete_at.is_some() {
            (self.progress)(&report(rx));
            self.next_progress = now + Duration::from_millis(200);
        }
        // Done: complete, and the server has recorded it (or has ended the session, or a
        // short grace period for its acknowledgement has passed).
        let done = match complete_at {
            None => false,
            // Split mode: others may still need the copies this member forwards, so it stays
            // until the server ends the session (or falls silent).
            Some(_) if self.cfg.split.is_some() => rx.is_ended() || self.server_gone,
            Some(at) => {
                rx.poll_timeout().is_none()
                    || rx.is_ended()
                    || now.duration_since(at) > Duration::from_secs(2)
            }
        };
        Ok(if done { Flow::Stop } else { Flow::Continue })
    }

    fn max_wait(&self, _rx: &Receiver<FileStore>) -> Duration {
        // While blocks are out for hashing, come back soon for the answers.
        if self.verifier.outstanding() > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        }
    }
}
