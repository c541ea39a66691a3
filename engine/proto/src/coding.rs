//! Parity units: a systematic Reed-Solomon code over one block (reed-solomon-simd).
//!
//! A block of `k` units has up to `max_parity` parity units; any `k` of the `k + max_parity`
//! units rebuild the block, so one parity unit repairs any one missing unit at any receiver.
//! Units are shards of `unit_size` bytes; the short last unit of an object is zero-padded.

use std::cell::RefCell;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

thread_local! {
    // One encoder and one decoder per thread, reset for each block: a fresh one allocates (and
    // the kernel zeroes) its whole working space, several MB for a block of large units.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

/// Whether the code supports `k` original and `m` parity units per block.
pub fn supported(k: u16, m: u16) -> bool {
    ReedSolomonEncoder::supports(usize::from(k), usize::from(m))
}

/// Makes all `max_parity` parity units of one block. `block` may be shorter than
/// `k * unit_size` (the last block of an object): the missing tail counts as zeros.
pub fn encode_block(
    block: &[u8],
    k: u16,
    max_parity: u16,
    unit_size: u16,
) -> Result<Vec<u8>, reed_solomon_simd::Error> {
    let us = usize::from(unit_size);
    let (k_, m_) = (usize::from(k), usize::from(max_parity));
    ENCODER.with_borrow_mut(|slot| {
        match slot {
            Some(enc) => enc.reset(k_, m_, us)?,
            None => *slot = Some(ReedSolomonEncoder::new(k_, m_, us)?),
        }
        let enc = slot.as_mut().expect("set above");
        encode_with(enc, block, k, m_, us)
    })
}

fn encode_with(
    enc: &mut ReedSolomonEncoder,
    block: &[u8],
    k: u16,
    m: usize,
    us: usize,
) -> Result<Vec<u8>, reed_solomon_simd::Error> {
    let mut pad = vec![0u8; us];
    for u in 0..usize::from(k) {
        let start = (u * us).min(block.len());
        let end = ((u + 1) * us).min(block.len());
        if end - start == us {
            enc.add_original_shard(&block[start..end])?;
        } else {
            pad.fill(0);
            pad[..end - start].copy_from_slice(&block[start..end]);
            enc.add_original_shard(&pad)?;
        }
    }
    let result = enc.encode()?;
    let mut out = Vec::with_capacity(us * m);
    for shard in result.recovery_iter() {
        out.extend_from_slice(shard);
    }
    Ok(out)
}

/// Rebuilds the missing units of a block in place.
///
/// `block` holds the units present (`have[u]` true) at their places; `parity` lists the
/// parity units received as (parity index, bytes). On success every missing unit of
/// `block` has been written. Fails if there are fewer than `k` units in all.
pub fn decode_block(
    block: &mut [u8],
    have: impl Fn(usize) -> bool,
    parity: &[(u16, &[u8])],
    k: u16,
    max_parity: u16,
    unit_size: u16,
) -> Result<(), reed_solomon_simd::Error> {
    let us = usize::from(unit_size);
    let (k_, m_) = (usize::from(k), usize::from(max_parity));
    DECODER.with_borrow_mut(|slot| {
        match slot {
            Some(dec) => dec.reset(k_, m_, us)?,
            None => *slot = Some(ReedSolomonDecoder::new(k_, m_, us)?),
        }
        let dec = slot.as_mut().expect("set above");
        decode_with(dec, block, have, parity, k, us)
    })
}

fn decode_with(
    dec: &mut ReedSolomonDecoder,
    block: &mut [u8],
    have: impl Fn(usize) -> bool,
    parity: &[(u16, &[u8])],
    k: u16,
    us: usize,
) -> Result<(), reed_solomon_simd::Error> {
    let mut pad = vec![0u8; us];
    for u in (0..usize::from(k)).filter(|&u| have(u)) {
        let start = (u * us).min(block.len());
        let end = ((u + 1) * us).min(block.len());
        if end - start == us {
            dec.add_original_shard(u, &block[start..end])?;
        } else {
            pad.fill(0);
            pad[..end - start].copy_from_slice(&block[start..end]);
            dec.add_original_shard(u, &pad)?;
        }
    }
    for &(i, bytes) in parity {
        dec.add_recovery_shard(usize::from(i), bytes)?;
    }
    let result = dec.decode()?;
    for (u, shard) in result.restored_original_iter() {
        let start = (u * us).min(block.len());
        let end = ((u + 1) * us).min(block.len());
        block[start..end].copy_from_slice(&shard[..end - start]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_repairs_different_losses() {
        let us = 64u16;
        let k = 16u16;
        let m = 8u16;
        // A short last block: 15.5 units.
        let data: Vec<u8> = (0..(usize::from(us) * 15 + 32))
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        let parity = encode_block(&data, k, m, us).unwrap();
        let p = |i: u16| &parity[usize::from(i) * 64..usize::from(i + 1) * 64];
        // Receiver A lost units 0 and 15 (the short one), receiver B lost 3, 4 and 9.
        for lost in [vec![0usize, 15], vec![3, 4, 9]] {
            let mut block = data.clone();
            for &u in &lost {
                let end = ((u + 1) * 64).min(block.len());
                block[u * 64..end].fill(0xEE);
            }
            let got: Vec<(u16, &[u8])> =
                (0..lost.len() as u16).map(|i| (i + 2, p(i + 2))).collect();
            decode_block(&mut block, |u| !lost.contains(&u), &got, k, m, us).unwrap();
            assert_eq!(block, data);
        }
    }

    #[test]
    fn the_reused_coders_follow_each_blocks_geometry() {
        // One thread, so the same encoder and decoder are reset between shapes.
        for (k, m, us) in [
            (16u16, 8u16, 64u16),
            (4, 2, 128),
            (749, 128, 64),
            (16, 8, 64),
        ] {
            let n = usize::from(k) * usize::from(us) - 10;
            let data: Vec<u8> = (0..n).map(|i| (i * 13 + usize::from(k)) as u8).collect();
            let parity = encode_block(&data, k, m, us).unwrap();
            assert_eq!(parity.len(), usize::from(m) * usize::from(us));
            let lost = [1usize, usize::from(k) - 1];
            let mut block = data.clone();
            for &u in &lost {
                let end = ((u + 1) * usize::from(us)).min(n);
                block[u * usize::from(us)..end].fill(0);
            }
            let us_ = usize::from(us);
            // The last two parity units stand in for the two lost.
            let got: Vec<(u16, &[u8])> = (m - 2..m)
                .map(|i| (i, &parity[usize::from(i) * us_..usize::from(i + 1) * us_]))
                .collect();
            decode_block(&mut block, |u| !lost.contains(&u), &got, k, m, us).unwrap();
            assert_eq!(block, data, "k {k} m {m} unit {us}");
        }
    }

    #[test]
    fn too_few_units_fail() {
        let data = vec![1u8; 256];
        let parity = encode_block(&data, 4, 2, 64).unwrap();
        let mut block = data.clone();
        let got = [(0u16, &parity[..64])];
        assert!(decode_block(&mut block, |u| u < 2, &got, 4, 2, 64).is_err());
    }
}
