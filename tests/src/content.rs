//! The content a simulated server sends, and the figures derived from it.

use std::sync::Arc;
use std::time::Duration;

use blockcast_proto::wire::{BlockIndex, Manifest, ObjectEntry, ObjectId, UNIT_HEADER_LEN};
use blockcast_proto::{BlockSource, Geometry};

use crate::SimRng;

/// Objects of the given sizes, filled from `rng` one object after the other.
pub(crate) fn random_content(rng: &mut SimRng, sizes: &[usize]) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .map(|&n| {
            let mut v = vec![0u8; n];
            rng.fill(&mut v);
            v
        })
        .collect()
}

/// A server's content, shared: the sender and each of its stripes read the same bytes.
#[derive(Clone)]
pub(crate) struct ContentSource {
    objects: Arc<Vec<Vec<u8>>>,
    block_size: usize,
}

impl ContentSource {
    pub(crate) fn new(objects: Arc<Vec<Vec<u8>>>, block_size: usize) -> Self {
        ContentSource {
            objects,
            block_size,
        }
    }
}

impl BlockSource for ContentSource {
    fn block(&self, object: ObjectId, block: BlockIndex) -> &[u8] {
        let o = &self.objects[object.0 as usize];
        let start = block.0 as usize * self.block_size;
        &o[start..(start + self.block_size).min(o.len())]
    }
}

/// The manifest of `content`, objects named `object-0`, `object-1`, ...
pub(crate) fn manifest(geometry: Geometry, content: &[Vec<u8>]) -> Manifest {
    let block_size = geometry.block_size();
    Manifest {
        unit_size: geometry.unit_size,
        units_per_block: geometry.units_per_block,
        objects: content
            .iter()
            .enumerate()
            .map(|(i, c)| ObjectEntry::from_content(format!("object-{i}"), c, block_size))
            .collect(),
    }
}

/// Every block's hash, object by object: what receivers' stores check against.
pub(crate) fn block_hashes(manifest: &Manifest) -> Arc<Vec<Vec<[u8; 32]>>> {
    Arc::new(
        manifest
            .objects
            .iter()
            .map(|o| o.block_hashes.clone())
            .collect(),
    )
}

/// Data units in `content`.
pub(crate) fn minimal_units(content: &[Vec<u8>], unit_size: u16) -> u64 {
    content
        .iter()
        .map(|c| (c.len() as u64).div_ceil(u64::from(unit_size)))
        .sum()
}

/// The first pass alone at `rate` plus one link delay: the lossless lower bound.
pub(crate) fn ideal_time(
    content: &[Vec<u8>],
    unit_size: u16,
    rate: u64,
    delay: Duration,
) -> Duration {
    let first_pass_bytes: u64 = content
        .iter()
        .map(|c| {
            let units = (c.len() as u64).div_ceil(u64::from(unit_size));
            c.len() as u64 + units * UNIT_HEADER_LEN as u64
        })
        .sum();
    Duration::from_secs_f64(first_pass_bytes as f64 / rate as f64) + delay
}
