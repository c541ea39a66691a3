//! Parity units: a systematic Reed-Solomon code over one block (reed-solomon-simd).
//!
//! A block of `k` units has up to `max_parity` parity units; any `k` of the `k + max_parity`
//! units rebuild the block, so one parity unit repairs any one missing unit at any receiver.
//! Units are shards of `unit_size` bytes; the short last unit of an object is zero-padded.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

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
    let mut enc = ReedSolomonEncoder::new(usize::from(k), usize::from(max_parity), us)?;
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
    let mut out = Vec::with_capacity(us * usize::from(max_parity));
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
    let mut dec = ReedSolomonDecoder::new(usize::from(k), usize::from(max_parity), us)?;
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
    fn too_few_units_fail() {
        let data = vec![1u8; 256];
        let parity = encode_block(&data, 4, 2, 64).unwrap();
        let mut block = data.clone();
        let got = [(0u16, &parity[..64])];
        assert!(decode_block(&mut block, |u| u < 2, &got, 4, 2, 64).is_err());
    }
}
