//! What kind of picture a video PES packet holds, for H.265: from the NAL unit types of its
//! slice segments alone (Rec. ITU-T H.265 §7.4.2.2). An IRAP picture (types 16 to 23) decodes on
//! its own; P and B are not told apart, since `slice_type` sits behind fields whose presence
//! the PPS decides, so every other picture is [`PictureKind::Inter`].

use super::h264::{merge, nal_units, pes_payload, Picture, PictureKind};

/// Classifies one PES packet (header included) carrying H.265 in Annex B byte stream form.
pub fn classify_pes(pes: &[u8]) -> Picture {
    // What cannot be read may be referred to: dropping it ends what the rendition keeps until
    // the next random access point.
    let unknown = Picture {
        kind: PictureKind::Unknown,
        reference: true,
    };
    let Some(es) = pes_payload(pes) else {
        return unknown;
    };
    let mut kind = None;
    let mut reference = false;
    for nal in nal_units(es) {
        // Two header bytes: forbidden bit, nal_unit_type (6), layer id (6), temporal id + 1 (3).
        let [first, _, ..] = nal else {
            continue;
        };
        let nal_type = (first >> 1) & 0x3f;
        let this = match nal_type {
            // IDR_W_RADL, IDR_N_LP.
            19 | 20 => PictureKind::Idr,
            // BLA, CRA and the reserved IRAP types.
            16..=23 => PictureKind::Intra,
            0..=15 | 24..=31 => PictureKind::Inter,
            // Parameter sets, SEI, delimiters: not slices.
            _ => continue,
        };
        // Sub-layer non-reference pictures have the even types below 16.
        reference |= !(nal_type < 16 && nal_type % 2 == 0);
        kind = Some(kind.map_or(this, |seen| merge(seen, this)));
    }
    kind.map_or(unknown, |kind| Picture { kind, reference })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pes(nals: &[&[u8]]) -> Vec<u8> {
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x00, 0x00];
        for nal in nals {
            pes.extend_from_slice(&[0, 0, 0, 1]);
            pes.extend_from_slice(nal);
        }
        pes
    }

    const AUD: &[u8] = &[35 << 1, 1, 0x50];
    const VPS: &[u8] = &[32 << 1, 1, 0x0c];
    const IDR_N_LP: &[u8] = &[20 << 1, 1, 0xaf];
    const CRA: &[u8] = &[21 << 1, 1, 0xaf];
    const TRAIL_R: &[u8] = &[1 << 1, 1, 0xd0];
    const TRAIL_N: &[u8] = &[0, 1, 0xd0];

    #[test]
    fn irap_pictures_are_intra_and_the_rest_inter() {
        assert_eq!(
            classify_pes(&pes(&[AUD, VPS, IDR_N_LP])).kind,
            PictureKind::Idr
        );
        assert_eq!(
            classify_pes(&pes(&[AUD, CRA, CRA])).kind,
            PictureKind::Intra
        );
        assert_eq!(
            classify_pes(&pes(&[AUD, TRAIL_R])),
            Picture {
                kind: PictureKind::Inter,
                reference: true
            }
        );
        assert_eq!(
            classify_pes(&pes(&[TRAIL_N])),
            Picture {
                kind: PictureKind::Inter,
                reference: false
            }
        );
        assert_eq!(classify_pes(&pes(&[AUD, VPS])).kind, PictureKind::Unknown);
    }
}
