//! The manifest: what a receiver needs to place and verify data (wire.md §5.1).

use super::cursor::{Reader, Writer};
use super::{ObjectId, WireError};

/// Largest manifest a receiver accepts (bounds the memory an announce can make it reserve).
pub const MAX_MANIFEST_LEN: usize = 64 << 20;
/// Longest object name, in bytes.
pub const MAX_NAME_LEN: usize = 4096;
const MANIFEST_VERSION: u8 = 1;

/// One object of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Relative path, `/`-separated, no `..`, `.` or empty components.
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the whole object (what `b3sum` prints).
    pub hash: [u8; 32],
    /// BLAKE3 of each block, in block order.
    pub block_hashes: Vec<[u8; 32]>,
}

/// Objects, their sizes and hashes, and the block geometry. Object `i` has `ObjectId(i)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub unit_size: u16,
    pub units_per_block: u16,
    pub objects: Vec<ObjectEntry>,
}

/// Whether `name` is a safe relative path for a receiver to create.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('/')
        && !name.contains('\0')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

impl ObjectEntry {
    /// Hashes `content` block by block (the server does this once per object).
    pub fn from_content(name: impl Into<String>, content: &[u8], block_size: usize) -> Self {
        ObjectEntry {
            name: name.into(),
            size: content.len() as u64,
            hash: *blake3::hash(content).as_bytes(),
            block_hashes: content
                .chunks(block_size.max(1))
                .map(|b| *blake3::hash(b).as_bytes())
                .collect(),
        }
    }
}

impl Manifest {
    /// Bytes in one block.
    pub fn block_size(&self) -> u64 {
        u64::from(self.unit_size) * u64::from(self.units_per_block)
    }

    /// Blocks in an object of `size` bytes.
    pub fn blocks_for(&self, size: u64) -> u64 {
        size.div_ceil(self.block_size())
    }

    pub fn object(&self, id: ObjectId) -> Option<&ObjectEntry> {
        self.objects.get(id.0 as usize)
    }

    /// Length of block `block` of object `object` (the last block may be short).
    pub fn block_len(&self, object: ObjectId, block: u32) -> Option<usize> {
        let o = self.object(object)?;
        let start = u64::from(block) * self.block_size();
        if start >= o.size {
            return None;
        }
        Some((o.size - start).min(self.block_size()) as usize)
    }

    pub fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    pub fn total_blocks(&self) -> u64 {
        self.objects
            .iter()
            .map(|o| o.block_hashes.len() as u64)
            .sum()
    }

    pub fn buffer_len(&self) -> usize {
        1 + 2
            + 2
            + 4
            + self
                .objects
                .iter()
                .map(|o| 8 + 2 + o.name.len() + 32 + 4 + 32 * o.block_hashes.len())
                .sum::<usize>()
    }

    /// Serializes the manifest.
    pub fn emit(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![0u8; self.buffer_len()];
        if out.len() > MAX_MANIFEST_LEN {
            return Err(WireError::Malformed);
        }
        let mut w = Writer::new(&mut out);
        w.u8(MANIFEST_VERSION)?;
        w.u16(self.unit_size)?;
        w.u16(self.units_per_block)?;
        w.u32(u32::try_from(self.objects.len()).map_err(|_| WireError::Malformed)?)?;
        for o in &self.objects {
            if !valid_name(&o.name) {
                return Err(WireError::Malformed);
            }
            w.u64(o.size)?;
            w.u16(o.name.len() as u16)?;
            w.bytes(o.name.as_bytes())?;
            w.bytes(&o.hash)?;
            w.u32(u32::try_from(o.block_hashes.len()).map_err(|_| WireError::Malformed)?)?;
            for h in &o.block_hashes {
                w.bytes(h)?;
            }
        }
        Ok(out)
    }

    /// Parses and validates a manifest: geometry, names, and that each object has exactly
    /// the blocks its size needs.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, WireError> {
        if bytes.len() > MAX_MANIFEST_LEN {
            return Err(WireError::Malformed);
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != MANIFEST_VERSION {
            return Err(WireError::BadVersion);
        }
        let unit_size = r.u16()?;
        let units_per_block = r.u16()?;
        if unit_size < 2 || unit_size % 2 != 0 || units_per_block == 0 || units_per_block > 32_768 {
            return Err(WireError::Malformed);
        }
        let block_size = u64::from(unit_size) * u64::from(units_per_block);
        let count = r.u32()? as usize;
        // Each object takes at least 46 bytes: reject counts that cannot fit before allocating.
        if count.saturating_mul(46) > r.remaining() {
            return Err(WireError::Malformed);
        }
        let mut objects = Vec::with_capacity(count);
        for _ in 0..count {
            let size = r.u64()?;
            let name_len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.bytes(name_len)?)
                .map_err(|_| WireError::Malformed)?
                .to_owned();
            if !valid_name(&name) {
                return Err(WireError::Malformed);
            }
            let hash = r.array()?;
            let blocks = r.u32()? as usize;
            if blocks as u64 != size.div_ceil(block_size)
                || blocks.saturating_mul(32) > r.remaining()
            {
                return Err(WireError::Malformed);
            }
            let mut block_hashes = Vec::with_capacity(blocks);
            for _ in 0..blocks {
                block_hashes.push(r.array()?);
            }
            objects.push(ObjectEntry {
                name,
                size,
                hash,
                block_hashes,
            });
        }
        r.finish()?;
        // Two objects may not land on the same path, nor one inside the other ("a", "a/b").
        let names: std::collections::HashSet<&str> =
            objects.iter().map(|o| o.name.as_str()).collect();
        if names.len() != objects.len() {
            return Err(WireError::Malformed);
        }
        for o in &objects {
            let n = o.name.as_str();
            if n.match_indices('/').any(|(i, _)| names.contains(&n[..i])) {
                return Err(WireError::Malformed);
            }
        }
        Ok(Manifest {
            unit_size,
            units_per_block,
            objects,
        })
    }
}
