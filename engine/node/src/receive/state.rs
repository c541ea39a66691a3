//! A receiver's persisted receive status: one state file per content under `--out`, so a
//! receive that is killed, stopped or fails resumes where it was (docs/DESIGN.md "Resume",
//! with the format and why it is safe).
//!
//! Where: for a directory `--out D`, `D/.blockcast/<manifest hash>.state` and the lock
//! `D/.blockcast/lock`; for a single-file `--out P/name`, beside the file:
//! `P/.blockcast/name.<manifest hash>.state` and `P/.blockcast/name.lock`.
//!
//! What (little-endian; written once, then only its slots and hint are rewritten in place):
//!
//! ```text
//! 0    magic "BCSTATE\0"
//! 8    version (u32, 1), reserved (u32, 0)
//! 16   manifest length M (u64), blocks N (u64)
//! 32   manifest hash (32 bytes: BLAKE3 of the manifest, as announced)
//! 64   the manifest (M bytes, its wire encoding)
//! S    slot 0, then slot 1, each: sequence (u64), checksum (32 bytes: BLAKE3 of the manifest
//!      hash, the sequence and the bitmap), the verified-block bitmap (ceil(N/8) bytes, bit b
//!      of byte b/8 for global block b, least significant bit first), padded to 8 bytes
//! H    the hint: a bitmap like a slot's, never synced
//! ```
//!
//! S is 64 + M rounded up to 8. The slot with a good checksum and the higher sequence is the
//! durable record; the hint says what was verified since (exact after a kill, anything after
//! a power loss), so its blocks are hashed again before they count.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blockcast_io::beneath::{Access, Beneath};
use blockcast_proto::wire::{Manifest, MAX_MANIFEST_LEN};

/// The directory (under `--out`, or beside a single output file) that holds state files.
pub(crate) const STATE_DIR: &str = ".blockcast";
/// How often what is verified is made durable (data synced first, then the state).
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// State files offered at a start, newest first (each is a content this `--out` received).
const MAX_RESUMABLE: usize = 16;

const MAGIC: &[u8; 8] = b"BCSTATE\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;

/// Where one `--out` keeps its state files and its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StateDir {
    /// What every file of this `--out` is opened beneath: `--out` itself for a directory, the
    /// directory holding it for a single file (docs/DESIGN.md "Safe storing").
    pub(crate) root: PathBuf,
    dir: PathBuf,
    /// Before each file name: "" for a directory `--out`, "name." for a single file.
    prefix: String,
}

impl StateDir {
    /// For `out` stored as a directory (`as_dir`) or as one file.
    pub(crate) fn for_out(out: &Path, as_dir: bool) -> Self {
        if as_dir {
            return StateDir {
                root: out.to_path_buf(),
                dir: out.join(STATE_DIR),
                prefix: String::new(),
            };
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
        StateDir {
            root: parent.to_path_buf(),
            dir: parent.join(STATE_DIR),
            prefix: format!("{name}."),
        }
    }

    /// The state file of the content whose manifest hashes to `hash`.
    pub(crate) fn state_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}{}.state", self.prefix, hex(hash)))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}lock", self.prefix))
    }

    /// The manifest hash a file name of this directory names, if it is one of its state files.
    fn hash_of(&self, name: &str) -> Option<[u8; 32]> {
        let hex = name.strip_prefix(&self.prefix)?.strip_suffix(".state")?;
        unhex(hex)
    }

    /// The root, opened (`None` if it is not there).
    fn beneath(&self) -> Option<Beneath> {
        Beneath::open(&self.root).ok()
    }

    /// This directory's state files: (manifest hash, path). None if it is not there.
    fn state_files(&self, b: &Beneath) -> Vec<([u8; 32], PathBuf)> {
        let names = b.list(&self.dir).unwrap_or_default();
        names
            .iter()
            .filter_map(|n| {
                let hash = self.hash_of(&n.to_string_lossy())?;
                Some((hash, self.dir.join(n)))
            })
            .collect()
    }
}

/// A content an earlier receive into this `--out` left a state file for.
pub(crate) struct Resumable {
    pub hash: [u8; 32],
    pub manifest: Manifest,
}

/// The state files under `out`, before anything is known of the session: a directory `out`
/// holds them in `out/.blockcast`, a single file beside it. Damaged files are left out (and
/// replaced when their content is received again).
pub(crate) fn find(out: &Path) -> (StateDir, Vec<Resumable>) {
    let sd = StateDir::for_out(out, out.is_dir());
    let Some(b) = sd.beneath() else {
        return (sd, Vec::new());
    };
    let mut found: Vec<(std::time::SystemTime, [u8; 32], PathBuf)> = Vec::new();
    for (hash, path) in sd.state_files(&b) {
        let at = b
            .open_file(&path, Access::Read)
            .and_then(|f| f.metadata()?.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        found.push((at, hash, path));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    let resumable = found
        .into_iter()
        .take(MAX_RESUMABLE)
        .filter_map(|(_, hash, path)| match read_manifest(&b, &path, &hash) {
            Ok(manifest) => Some(Resumable { hash, manifest }),
            Err(e) => {
                tracing::warn!("ignoring state file {}: {e}", crate::names::shown(&path));
                None
            }
        })
        .collect();
    (sd, resumable)
}

/// Whether `file`, an output path of a receive into `out`, is one a receive of ours left: a
/// state file for `out` names it (our own resumable partial, or our copy), so a new receive
/// may write into it. A file that no state file names is someone else's.
pub fn is_own_partial(out: &Path, file: &Path) -> bool {
    own_files(out, file == out).contains(file)
}

/// The output paths the state files of `out` (a single file if `single`) name: files a receive
/// of ours left there.
pub(crate) fn own_files(out: &Path, single: bool) -> HashSet<PathBuf> {
    // A single-file `out` has its state files beside it, one object each; a directory's
    // name each object's path under it.
    let sd = StateDir::for_out(out, !single);
    let Some(b) = sd.beneath() else {
        return HashSet::new();
    };
    let mut own = HashSet::new();
    for (hash, path) in sd.state_files(&b) {
        let Ok(m) = read_manifest(&b, &path, &hash) else {
            continue;
        };
        if single && m.objects.len() == 1 {
            own.insert(out.to_path_buf());
        } else if !single {
            own.extend(m.objects.iter().map(|o| out.join(&o.name)));
        }
    }
    own
}

/// Removes the state files of other contents that name a file `manifest` is about to write
/// (`out` stored as `sd` says): once the file holds other bytes, their records of it would be
/// wrong. Done before any of those files is written, and made durable (the directory synced).
pub(crate) fn retire_others(
    sd: &StateDir,
    out: &Path,
    hash: &[u8; 32],
    manifest: &Manifest,
) -> io::Result<()> {
    let Some(b) = sd.beneath() else {
        return Ok(());
    };
    let single = !sd.prefix.is_empty();
    let ours: HashSet<PathBuf> = manifest.objects.iter().map(|o| out.join(&o.name)).collect();
    let mut removed = false;
    for (h, path) in sd.state_files(&b) {
        if h == *hash {
            continue;
        }
        // A single file's other state files all name it; a directory's, the objects they list.
        let overlaps = single
            || read_manifest(&b, &path, &h)
                .is_ok_and(|m| m.objects.iter().any(|o| ours.contains(&out.join(&o.name))));
        if overlaps {
            b.remove_file(&path)?;
            removed = true;
        }
    }
    if removed {
        b.sync_dir(&sd.dir)?;
    }
    Ok(())
}

/// The lock on one `--out`: a second receive (or relay) into it is refused while a first
/// holds it. The operating system releases it when the process ends, however it ends.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another process holds it.
    Busy(PathBuf),
    Io(PathBuf, io::Error),
}

impl StateLock {
    pub(crate) fn acquire(sd: &StateDir) -> Result<StateLock, LockError> {
        let path = sd.lock_path();
        let io_err = |e| LockError::Io(path.clone(), e);
        let b = Beneath::create(&sd.root).map_err(io_err)?;
        b.create_dirs(&sd.dir).map_err(io_err)?;
        let file = b.open_file(&path, Access::Create).map_err(io_err)?;
        match blockcast_io::os::try_lock_exclusive(&file) {
            Ok(true) => Ok(StateLock { _file: file }),
            Ok(false) => Err(LockError::Busy(path)),
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Byte offsets of a state file's parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    slots: u64,
    slot_len: u64,
    bitmap_len: usize,
    hint: u64,
    len: u64,
}

impl Layout {
    fn new(manifest_len: usize, blocks: u64) -> Self {
        let bitmap_len = blocks.div_ceil(8) as usize;
        let slots = (HEADER_LEN + manifest_len).next_multiple_of(8) as u64;
        let slot_len = (8 + 32 + bitmap_len).next_multiple_of(8) as u64;
        let hint = slots + 2 * slot_len;
        Layout {
            slots,
            slot_len,
            bitmap_len,
            hint,
            len: hint + bitmap_len as u64,
        }
    }

    fn slot(&self, seq: u64) -> u64 {
        self.slots + (seq % 2) * self.slot_len
    }
}

fn checksum(hash: &[u8; 32], seq: u64, bitmap: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(hash);
    h.update(&seq.to_le_bytes());
    h.update(bitmap);
    *h.finalize().as_bytes()
}

fn slot_bytes(hash: &[u8; 32], seq: u64, bitmap: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + bitmap.len());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&checksum(hash, seq, bitmap));
    v.extend_from_slice(bitmap);
    v
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// What reading a state file takes: positioned reads and its length (a file; bytes when
/// fuzzed).
trait StateBytes {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    fn length(&self) -> io::Result<u64>;
}

impl StateBytes for File {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, at)
    }

    fn length(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl StateBytes for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let start = usize::try_from(at).map_err(|_| bad("past the end"))?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| bad("past the end"))?;
        let bytes = self.get(start..end).ok_or_else(|| bad("past the end"))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn length(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Reads `bytes` as a state file, as a resume would; with `fix`, first makes its header,
/// manifest hash, block count and length agree (so the input reaches the slots). For the
/// fuzz targets (fuzz/): any input, no panic; what it records names only real blocks.
#[doc(hidden)]
pub fn fuzz_state_file(bytes: &[u8], fix: bool) {
    let mut bytes = bytes.to_vec();
    if fix && bytes.len() >= HEADER_LEN {
        let m = (bytes.len() - HEADER_LEN).min(MAX_MANIFEST_LEN);
        let m = m.min(u16::from_le_bytes([bytes[16], bytes[17]]) as usize);
        bytes[16..24].copy_from_slice(&(m as u64).to_le_bytes());
        let hash = *blake3::hash(&bytes[HEADER_LEN..HEADER_LEN + m]).as_bytes();
        bytes[32..64].copy_from_slice(&hash);
        if let Ok(manifest) = Manifest::parse(&bytes[HEADER_LEN..HEADER_LEN + m]) {
            let blocks = manifest.total_blocks();
            bytes[24..32].copy_from_slice(&blocks.to_le_bytes());
            let len = Layout::new(m, blocks).len;
            bytes.resize(len.min(1 << 24) as usize, 0);
        }
    }
    let Some(hash) = bytes.get(32..64).and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
        return;
    };
    let Ok((_, manifest, layout)) = read_header(bytes.as_slice(), &hash) else {
        return;
    };
    if let Ok((_, recorded)) = read_slots(bytes.as_slice(), &hash, &layout) {
        let blocks = manifest.total_blocks();
        assert_eq!(recorded.durable.len() as u64, blocks.div_ceil(8));
        assert_eq!(recorded.hint.len() as u64, blocks.div_ceil(8));
    }
}

/// Reads and checks a state file's header and manifest.
fn read_header<F: StateBytes + ?Sized>(
    f: &F,
    hash: &[u8; 32],
) -> io::Result<(Vec<u8>, Manifest, Layout)> {
    let mut head = [0u8; HEADER_LEN];
    f.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(bad("not a blockcast state file"));
    }
    if u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) != VERSION {
        return Err(bad("a state file of another version"));
    }
    let manifest_len = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
    let blocks = u64::from_le_bytes(head[24..32].try_into().unwrap_or_default());
    if manifest_len > MAX_MANIFEST_LEN as u64 || &head[32..64] != hash {
        return Err(bad("its header does not match its name"));
    }
    let mut bytes = vec![0u8; manifest_len as usize];
    f.read_exact_at(&mut bytes, HEADER_LEN as u64)?;
    if blake3::hash(&bytes).as_bytes() != hash {
        return Err(bad("its manifest does not match its hash"));
    }
    let manifest = Manifest::parse(&bytes).map_err(|e| bad(&format!("manifest: {e:?}")))?;
    if manifest.total_blocks() != blocks {
        return Err(bad("its block count does not match its manifest"));
    }
    let layout = Layout::new(bytes.len(), blocks);
    if f.length()? != layout.len {
        return Err(bad("it has the wrong length"));
    }
    Ok((bytes, manifest, layout))
}

fn read_manifest(b: &Beneath, path: &Path, hash: &[u8; 32]) -> io::Result<Manifest> {
    let f = b.open_file(path, Access::Read)?;
    read_header(&f, hash).map(|(_, m, _)| m)
}

/// What a state file said when it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The durable record: blocks verified and synced before it was written.
    pub durable: Vec<u8>,
    /// Blocks recorded since, not synced: to be hashed before they count.
    pub hint: Vec<u8>,
}

/// An open state file.
pub(crate) struct StateFile {
    file: File,
    hash: [u8; 32],
    layout: Layout,
    /// The sequence of the durable slot.
    seq: u64,
}

impl StateFile {
    /// Opens the state file of `manifest` (`bytes` its encoding, `hash` their BLAKE3) in
    /// `sd`, or makes one recording nothing (written whole under a temporary name, synced,
    /// renamed into place and the directory synced: a state file exists only whole). A
    /// damaged file is replaced. Returns what an existing file recorded.
    pub(crate) fn open(
        sd: &StateDir,
        hash: &[u8; 32],
        bytes: &[u8],
        blocks: u64,
    ) -> io::Result<(StateFile, Option<Recorded>)> {
        let path = sd.state_path(hash);
        let b = Beneath::create(&sd.root)?;
        if let Ok(file) = b.open_file(&path, Access::ReadWrite) {
            match read_header(&file, hash).and_then(|(_, _, layout)| {
                let recorded = read_slots(&file, hash, &layout)?;
                Ok((layout, recorded))
            }) {
                Ok((layout, (seq, recorded))) => {
                    let sf = StateFile {
                        file,
                        hash: *hash,
                        layout,
                        seq,
                    };
                    return Ok((sf, Some(recorded)));
                }
                Err(e) => {
                    tracing::warn!("replacing state file {}: {e}", crate::names::shown(&path))
                }
            }
        }
        b.create_dirs(&sd.dir)?;
        let layout = Layout::new(bytes.len(), blocks);
        let mut all = vec![0u8; layout.len as usize];
        all[..8].copy_from_slice(MAGIC);
        all[8..12].copy_from_slice(&VERSION.to_le_bytes());
        all[16..24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        all[24..32].copy_from_slice(&blocks.to_le_bytes());
        all[32..64].copy_from_slice(hash);
        all[HEADER_LEN..HEADER_LEN + bytes.len()].copy_from_slice(bytes);
        let seq = 1;
        let empty = vec![0u8; layout.bitmap_len];
        let at = layout.slot(seq) as usize;
        let slot = slot_bytes(hash, seq, &empty);
        all[at..at + slot.len()].copy_from_slice(&slot);
        let tmp = path.with_extension("state.tmp");
        {
            let f = b.open_file(&tmp, Access::Truncate)?;
            f.write_all_at(&all, 0)?;
            f.sync_all()?;
        }
        b.rename(&tmp, &path)?;
        b.sync_dir(&sd.dir)?;
        let file = b.open_file(&path, Access::ReadWrite)?;
        Ok((
            StateFile {
                file,
                hash: *hash,
                layout,
                seq,
            },
            None,
        ))
    }

    /// Writes the hint bytes `range` of `bitmap` (not synced).
    fn write_hint(&self, bitmap: &[u8], range: std::ops::Range<usize>) -> io::Result<()> {
        self.file.write_all_at(
            &bitmap[range.clone()],
            self.layout.hint + range.start as u64,
        )
    }

    /// Makes `bitmap` the durable record: written to the slot not holding the current one,
    /// then synced. A crash while it is written leaves that slot with a bad checksum and the
    /// other, older one whole.
    fn write_durable(&mut self, bitmap: &[u8]) -> io::Result<()> {
        let seq = self.seq + 1;
        let slot = slot_bytes(&self.hash, seq, bitmap);
        self.file.write_all_at(&slot, self.layout.slot(seq))?;
        self.file.sync_data()?;
        self.seq = seq;
        Ok(())
    }
}

/// The durable slot (the good one with the higher sequence) and the hint.
fn read_slots<F: StateBytes + ?Sized>(
    f: &F,
    hash: &[u8; 32],
    layout: &Layout,
) -> io::Result<(u64, Recorded)> {
    let mut best: Option<(u64, Vec<u8>)> = None;
    for i in 0..2u64 {
        let mut slot = vec![0u8; 40 + layout.bitmap_len];
        f.read_exact_at(&mut slot, layout.slots + i * layout.slot_len)?;
        let seq = u64::from_le_bytes(slot[..8].try_into().unwrap_or_default());
        let bitmap = &slot[40..];
        let good = seq % 2 == i && slot[8..40] == checksum(hash, seq, bitmap);
        if good && best.as_ref().is_none_or(|(s, _)| seq > *s) {
            best = Some((seq, bitmap.to_vec()));
        }
    }
    let (seq, durable) = best.unwrap_or((0, vec![0u8; layout.bitmap_len]));
    let mut hint = vec![0u8; layout.bitmap_len];
    f.read_exact_at(&mut hint, layout.hint)?;
    Ok((seq, Recorded { durable, hint }))
}

/// Whether bit `b` of a bitmap is set.
pub(crate) fn bit(bitmap: &[u8], b: u64) -> bool {
    bitmap
        .get((b / 8) as usize)
        .is_some_and(|byte| byte & (1 << (b % 8)) != 0)
}

fn set_bit(bitmap: &mut [u8], b: u64) -> Option<usize> {
    let i = (b / 8) as usize;
    let byte = bitmap.get_mut(i)?;
    let mask = 1 << (b % 8);
    if *byte & mask != 0 {
        return None;
    }
    *byte |= mask;
    Some(i)
}

/// The thread that records verified blocks: each at once in the hint (so a killed receiver
/// loses none), and every [`SYNC_INTERVAL`] and at the end in a durable slot, after syncing
/// the data files (so a block the durable record names is on the disk).
pub(crate) struct StateRecorder {
    tx: Option<mpsc::Sender<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl StateRecorder {
    /// Starts recording into `state`, with `verified` the blocks verified so far (what it
    /// recorded durably), syncing `data` before each durable record.
    pub(crate) fn start(
        state: StateFile,
        verified: Vec<u8>,
        data: Vec<Arc<File>>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<u64>();
        let thread = std::thread::Builder::new()
            .name("bc-state".into())
            .spawn(move || record(state, verified, data, rx))?;
        Ok(StateRecorder {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Global block `b` is verified (its bytes are written to its file).
    pub(crate) fn verified(&self, b: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(b);
        }
    }

    /// Records what is verified durably one last time and stops.
    pub(crate) fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StateRecorder {
    fn drop(&mut self) {
        self.finish();
    }
}

fn record(
    mut state: StateFile,
    mut current: Vec<u8>,
    data: Vec<Arc<File>>,
    rx: mpsc::Receiver<u64>,
) {
    let mut durable = current.clone();
    let mut next_sync = Instant::now() + SYNC_INTERVAL;
    let mut open = true;
    while open {
        let wait = next_sync.saturating_duration_since(Instant::now());
        let mut dirty: Option<std::ops::Range<usize>> = None;
        let mut note = |b: u64, current: &mut Vec<u8>| {
            if let Some(i) = set_bit(current, b) {
                dirty = Some(
                    dirty
                        .take()
                        .map_or(i..i + 1, |d| d.start.min(i)..d.end.max(i + 1)),
                );
            }
        };
        match rx.recv_timeout(wait) {
            Ok(b) => {
                note(b, &mut current);
                while let Ok(b) = rx.try_recv() {
                    note(b, &mut current);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
        }
        if let Some(range) = dirty {
            if let Err(e) = state.write_hint(&current, range) {
                tracing::warn!("cannot record verified blocks in the state file: {e}");
            }
        }
        if !open || Instant::now() >= next_sync {
            next_sync = Instant::now() + SYNC_INTERVAL;
            if current != durable {
                match sync_then_record(&mut state, &current, &data) {
                    Ok(()) => durable.clone_from(&current),
                    Err(e) => tracing::warn!("cannot make the state file durable: {e}"),
                }
            }
        }
    }
}

/// Data first, then the record that says it is there.
fn sync_then_record(state: &mut StateFile, bitmap: &[u8], data: &[Arc<File>]) -> io::Result<()> {
    for f in data {
        f.sync_data()?;
    }
    state.write_durable(bitmap)
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockcast_proto::wire::ObjectEntry;
    use std::fs::OpenOptions;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("bc-state-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A manifest of one object `name` of 20 blocks of 32 bytes, its encoding and hash.
    fn manifest(name: &str) -> (Manifest, Vec<u8>, [u8; 32]) {
        let content: Vec<u8> = (0..640u32).map(|i| (i % 251) as u8).collect();
        let m = Manifest {
            unit_size: 8,
            units_per_block: 4,
            objects: vec![ObjectEntry::from_content(name, &content, 32)],
        };
        let bytes = m.emit().expect("manifest");
        let hash = *blake3::hash(&bytes).as_bytes();
        (m, bytes, hash)
    }

    fn blocks(bitmap: &[u8]) -> Vec<u64> {
        (0..bitmap.len() as u64 * 8)
            .filter(|&b| bit(bitmap, b))
            .collect()
    }

    /// Records `verified` in `sd`'s state file for the manifest and stops (a durable record).
    fn record_run(sd: &StateDir, verified: &[u64]) -> Recorded {
        let (_, bytes, hash) = manifest("a");
        let (sf, recorded) = StateFile::open(sd, &hash, &bytes, 20).expect("state file");
        let start = recorded.clone().map(|r| r.durable).unwrap_or(vec![0u8; 3]);
        let mut r = StateRecorder::start(sf, start, Vec::new()).expect("recorder");
        for &b in verified {
            r.verified(b);
        }
        r.finish();
        recorded.unwrap_or_default()
    }

    #[test]
    fn what_is_verified_is_recorded_durably_and_a_torn_slot_falls_back_to_the_older_one() {
        let d = Dir::new("torn");
        let sd = StateDir::for_out(&d.0.join("out"), true);
        let (_, bytes, hash) = manifest("a");
        assert_eq!(record_run(&sd, &[0, 1]), Recorded::default(), "a new file");
        let r = record_run(&sd, &[0, 1, 5, 19]);
        assert_eq!(blocks(&r.durable), [0, 1]);
        // The newest slot (sequence 3: slot 1) torn by a crash while it was written.
        let f = OpenOptions::new()
            .write(true)
            .open(sd.state_path(&hash))
            .expect("open");
        let layout = Layout::new(bytes.len(), 20);
        f.write_all_at(&[0xff; 2], layout.slot(3) + 40)
            .expect("tear");
        let (_, recorded) = StateFile::open(&sd, &hash, &bytes, 20).expect("reopen");
        let recorded = recorded.expect("recorded");
        assert_eq!(blocks(&recorded.durable), [0, 1], "the older slot");
        // The hint still names what was verified since: hashed before it counts.
        assert_eq!(blocks(&recorded.hint), [0, 1, 5, 19]);
    }

    #[test]
    fn a_damaged_state_file_is_left_out_and_replaced() {
        let d = Dir::new("damaged");
        let out = d.0.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let sd = StateDir::for_out(&out, true);
        let (m, bytes, hash) = manifest("a");
        record_run(&sd, &[3]);
        let (_, found) = find(&out);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].hash, &found[0].manifest), (hash, &m));
        // A byte of the manifest changed: its hash no longer matches.
        let f = OpenOptions::new()
            .write(true)
            .open(sd.state_path(&hash))
            .expect("open");
        f.write_all_at(&[0xaa], HEADER_LEN as u64 + 20)
            .expect("damage");
        assert!(
            find(&out).1.is_empty(),
            "a damaged state file is not offered"
        );
        let (_, recorded) = StateFile::open(&sd, &hash, &bytes, 20).expect("replace");
        assert_eq!(recorded, None, "replaced by one that records nothing");
        assert_eq!(find(&out).1.len(), 1);
    }

    #[test]
    fn a_single_file_out_keeps_its_state_beside_it_apart_from_its_neighbours() {
        let d = Dir::new("single");
        let (a, b) = (d.0.join("a.bin"), d.0.join("b.bin"));
        let sa = StateDir::for_out(&a, false);
        record_run(&sa, &[1]);
        assert_eq!(find(&a).1.len(), 1);
        assert!(
            find(&b).1.is_empty(),
            "b.bin's receive does not see a.bin's state"
        );
        assert!(sa
            .state_path(&manifest("a").2)
            .starts_with(d.0.join(STATE_DIR)));
        assert!(is_own_partial(&a, &a));
        assert!(!is_own_partial(&b, &b));
    }

    #[test]
    fn a_directory_s_state_names_its_objects_as_our_own() {
        let d = Dir::new("own");
        let out = d.0.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let (m, bytes, hash) = {
            let (m, _, _) = manifest("sub/x.iso");
            let bytes = m.emit().expect("manifest");
            let hash = *blake3::hash(&bytes).as_bytes();
            (m, bytes, hash)
        };
        let sd = StateDir::for_out(&out, true);
        StateFile::open(&sd, &hash, &bytes, m.total_blocks()).expect("state file");
        assert!(is_own_partial(&out, &out.join("sub/x.iso")));
        assert!(!is_own_partial(&out, &out.join("sub/y.iso")));
    }

    /// A manifest of one object `name` whose bytes depend on `seed`, its encoding and hash.
    fn other(name: &str, seed: u8) -> (Manifest, Vec<u8>, [u8; 32]) {
        let content = vec![seed; 100];
        let m = Manifest {
            unit_size: 8,
            units_per_block: 4,
            objects: vec![ObjectEntry::from_content(name, &content, 32)],
        };
        let bytes = m.emit().expect("manifest");
        let hash = *blake3::hash(&bytes).as_bytes();
        (m, bytes, hash)
    }

    #[test]
    fn writing_other_content_into_a_file_retires_the_records_of_it() {
        let d = Dir::new("retire");
        let out = d.0.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let sd = StateDir::for_out(&out, true);
        let (a, b, keep) = (other("a", 1), other("a", 2), other("b", 3));
        for (m, bytes, hash) in [&a, &keep] {
            StateFile::open(&sd, hash, bytes, m.total_blocks()).expect("state file");
        }
        // Another content stored as "a": a's record goes, b's stays.
        retire_others(&sd, &out, &b.2, &b.0).expect("retire");
        let left: Vec<[u8; 32]> = find(&out).1.iter().map(|r| r.hash).collect();
        assert_eq!(left, [keep.2]);
        // A single file: every other content's record of it goes.
        let file = d.0.join("one.bin");
        let single = StateDir::for_out(&file, false);
        StateFile::open(&single, &a.2, &a.1, 4).expect("state file");
        retire_others(&single, &file, &b.2, &b.0).expect("retire");
        assert!(find(&file).1.is_empty());
    }

    #[test]
    fn the_lock_refuses_a_second_holder_until_the_first_lets_go() {
        let d = Dir::new("lock");
        let sd = StateDir::for_out(&d.0.join("out"), true);
        let first = StateLock::acquire(&sd).expect("first");
        assert!(matches!(StateLock::acquire(&sd), Err(LockError::Busy(_))));
        drop(first);
        assert!(StateLock::acquire(&sd).is_ok());
    }
}
