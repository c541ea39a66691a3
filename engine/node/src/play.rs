//! Play while receiving: the verified bytes of the objects, in order, to a player (stdout or
//! a command's stdin), from a start address on. A slow player never slows reception: this
//! thread reads back from the output files what the receive loop has verified, at the
//! player's pace, and the rest waits on disk.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::published::{Ask, Published, WaitError};

/// Where the played bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlayTo {
    /// This process's standard output.
    Stdout,
    /// A command run with `sh -c`, fed on its standard input.
    Command(String),
}

/// Where playback starts in the first object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// A block address, and a unit inside it.
    Unit { block: u32, unit: u16 },
    /// A byte offset.
    Byte(u64),
}

/// What playback did.
#[derive(Clone, Debug, Default)]
pub struct PlaySummary {
    pub bytes: u64,
    /// From the start of the receiver to the first byte handed to the player.
    pub first_byte_secs: Option<f64>,
    /// The player stopped reading (closed its input) before the end.
    pub player_left: bool,
    /// The command's exit status, when playing to a command.
    pub command_status: Option<i32>,
}

/// Blocks asked for ahead of the one being played.
const AHEAD: u32 = 8;

/// Plays every object in order (the first from `start`). Returns when everything was played,
/// the player left, or the transfer ended without the next block.
pub(crate) fn run(
    to: PlayTo,
    start: Option<StartAt>,
    published: Arc<Published>,
    asks: mpsc::Sender<Ask>,
    started: Instant,
    wait_limit: Duration,
) -> std::io::Result<PlaySummary> {
    let mut child: Option<Child> = None;
    let mut sink: Box<dyn Write> = match &to {
        PlayTo::Stdout => Box::new(std::io::stdout().lock()),
        PlayTo::Command(cmd) => {
            let mut c = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(Stdio::piped())
                .spawn()?;
            let stdin = c
                .stdin
                .take()
                .ok_or_else(|| std::io::Error::other("no stdin"))?;
            child = Some(c);
            Box::new(stdin)
        }
    };
    let mut summary = PlaySummary::default();
    let result = play_all(
        &mut *sink,
        start,
        &published,
        &asks,
        started,
        wait_limit,
        &mut summary,
    );
    drop(sink);
    if let Some(mut c) = child {
        summary.command_status = c.wait().ok().and_then(|s| s.code());
    }
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            summary.player_left = true;
            Ok(summary)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(summary),
    }
}

fn play_all(
    sink: &mut dyn Write,
    start: Option<StartAt>,
    published: &Published,
    asks: &mpsc::Sender<Ask>,
    started: Instant,
    wait_limit: Duration,
    summary: &mut PlaySummary,
) -> std::io::Result<()> {
    let Some(m) = published.wait_manifest(Instant::now() + wait_limit) else {
        return Ok(());
    };
    let bs = m.block_size();
    let mut buf = vec![0u8; 1 << 20];
    for (o, entry) in m.objects.iter().enumerate() {
        let mut offset = match (o, start) {
            (0, Some(StartAt::Byte(b))) => b.min(entry.size),
            (0, Some(StartAt::Unit { block, unit })) => {
                (u64::from(block) * bs + u64::from(unit) * u64::from(m.unit_size)).min(entry.size)
            }
            _ => 0,
        };
        while offset < entry.size {
            let block = (offset / bs) as u32;
            // Wait as long as the transfer goes on (the player takes what comes), asking again
            // each second in case a request or its answer was lost.
            match published.wait_block(
                o as u32,
                block,
                AHEAD,
                Instant::now() + Duration::from_secs(1),
                asks,
            ) {
                Ok(()) => {}
                Err(WaitError::TimedOut) => continue,
                Err(WaitError::Ended) | Err(WaitError::OutOfRange) => return Ok(()),
            }
            let block_end = ((u64::from(block) + 1) * bs).min(entry.size);
            while offset < block_end {
                let n = ((block_end - offset) as usize).min(buf.len());
                let got = published.read_at(o as u32, offset, &mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::other("output file shorter than verified"));
                }
                sink.write_all(&buf[..got])?;
                if summary.first_byte_secs.is_none() {
                    summary.first_byte_secs = Some(started.elapsed().as_secs_f64());
                }
                summary.bytes += got as u64;
                offset += got as u64;
            }
            sink.flush()?;
        }
    }
    Ok(())
}
