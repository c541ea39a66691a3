//! What kind of picture a video PES packet holds: its H.264 slices' `nal_unit_type`,
//! `nal_ref_idc` and `slice_type` (Rec. ITU-T H.264 §7.3.1, §7.3.3), read with h264-reader.

use h264_reader::nal::{NalHeader, UnitType};
use h264_reader::rbsp::{decode_nal, BitRead, BitReader};
use memchr::memmem;

/// The kind of picture, from all the slices of one PES packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PictureKind {
    /// An IDR picture: nothing after it refers to anything before it.
    Idr,
    /// Every slice is I or SI: decodable on its own.
    Intra,
    /// Some slice is P or SP, none is B.
    Predicted,
    /// Some slice is B.
    Bipredicted,
    /// Refers to other pictures, P or B not read (H.265 pictures that are not IRAP).
    Inter,
    /// No slice, or a slice header that does not parse (taken as a reference picture).
    Unknown,
}

impl PictureKind {
    /// Whether the picture decodes without any other picture.
    pub fn is_intra(self) -> bool {
        matches!(self, PictureKind::Idr | PictureKind::Intra)
    }
}

/// One PES packet's picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picture {
    /// Its kind.
    pub kind: PictureKind,
    /// Whether any slice has `nal_ref_idc` != 0: later pictures may refer to it.
    pub reference: bool,
}

/// The slice header bytes needed for `first_mb_in_slice` and `slice_type` (two Exp-Golomb
/// codes of at most 65 bits each), with room for emulation prevention bytes.
const SLICE_PREFIX: usize = 24;

/// Classifies one PES packet (header included) carrying H.264 in Annex B byte stream form.
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
        let Some(slice) = slice_of(nal) else {
            continue;
        };
        let Some(slice) = slice else {
            return unknown;
        };
        reference |= slice.reference;
        kind = Some(match kind {
            None => slice.kind,
            Some(seen) => merge(seen, slice.kind),
        });
    }
    kind.map_or(unknown, |kind| Picture { kind, reference })
}

/// The picture kind of two slices of one picture.
pub(crate) fn merge(a: PictureKind, b: PictureKind) -> PictureKind {
    use PictureKind::*;
    match (a, b) {
        (Unknown, _) | (_, Unknown) => Unknown,
        (Bipredicted, _) | (_, Bipredicted) => Bipredicted,
        (Inter, _) | (_, Inter) => Inter,
        (Predicted, _) | (_, Predicted) => Predicted,
        (Idr, _) | (_, Idr) => Idr,
        (Intra, Intra) => Intra,
    }
}

/// The elementary stream bytes of a PES packet with the optional header (§2.4.3.6).
pub(crate) fn pes_payload(pes: &[u8]) -> Option<&[u8]> {
    pes.get(pes_payload_start(pes)?..)
}

/// Where the elementary stream bytes of a PES packet begin.
pub(crate) fn pes_payload_start(pes: &[u8]) -> Option<usize> {
    if pes.get(..3)? != [0, 0, 1] {
        return None;
    }
    let start = 9 + usize::from(*pes.get(8)?);
    (start <= pes.len()).then_some(start)
}

/// The NAL units of an Annex B byte stream (start codes removed; trailing zero bytes of a
/// four-byte start code stay on the previous unit, which slice parsing never reaches).
pub(crate) fn nal_units(es: &[u8]) -> impl Iterator<Item = &[u8]> {
    nal_ranges(es).into_iter().map(move |range| &es[range])
}

/// Where the NAL units of an Annex B byte stream lie in it (as [`nal_units`]).
pub(crate) fn nal_ranges(es: &[u8]) -> Vec<std::ops::Range<usize>> {
    let starts: Vec<usize> = memmem::find_iter(es, &[0, 0, 1]).map(|at| at + 3).collect();
    let ends = starts.iter().skip(1).map(|next| next - 3).chain([es.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|(&start, end)| start..end.max(start))
        .collect()
}

/// `None` when the unit is not a slice; `Some(None)` when it is one whose header does not parse.
fn slice_of(nal: &[u8]) -> Option<Option<Picture>> {
    let header = NalHeader::new(*nal.first()?).ok()?;
    let idr = match header.nal_unit_type() {
        UnitType::SliceLayerWithoutPartitioningIdr => true,
        UnitType::SliceLayerWithoutPartitioningNonIdr | UnitType::SliceDataPartitionALayer => false,
        _ => return None,
    };
    Some(
        slice_type(&nal[..nal.len().min(SLICE_PREFIX)]).map(|slice_type| Picture {
            kind: match (idr, slice_type % 5) {
                (true, _) => PictureKind::Idr,
                (false, 2 | 4) => PictureKind::Intra,
                (false, 0 | 3) => PictureKind::Predicted,
                _ => PictureKind::Bipredicted,
            },
            reference: header.nal_ref_idc() != 0,
        }),
    )
}

/// `slice_type` from the start of a slice NAL unit (header byte included).
fn slice_type(nal_prefix: &[u8]) -> Option<u32> {
    let rbsp = decode_nal(nal_prefix).ok()?;
    let mut bits = BitReader::new(&rbsp[..]);
    bits.read_ue("first_mb_in_slice").ok()?;
    let slice_type = bits.read_ue("slice_type").ok()?;
    (slice_type <= 9).then_some(slice_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PES header with no optional fields, then `es`.
    fn pes(es: &[u8]) -> Vec<u8> {
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x00, 0x00];
        pes.extend_from_slice(es);
        pes
    }

    // Slice headers: first_mb_in_slice = 0 ('1'), then slice_type as ue(v).
    // ue 7 (I, all) = 0001000; ue 0 (P) = 1; ue 1 (B) = 010; ue 2 (I) = 011.
    const IDR: &[u8] = &[0, 0, 0, 1, 0x65, 0b1000_1000, 0x80];
    const I_ALL: &[u8] = &[0, 0, 1, 0x41, 0b1000_1000, 0x80];
    const P: &[u8] = &[0, 0, 1, 0x41, 0b1100_0000];
    const B_NON_REF: &[u8] = &[0, 0, 1, 0x01, 0b1010_0000];
    const I_SLICE: &[u8] = &[0, 0, 1, 0x41, 0b1011_0000];
    const AUD_SPS: &[u8] = &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1e];

    #[test]
    fn each_slice_type_gives_its_picture_kind() {
        let cases: [(&[u8], PictureKind, bool); 4] = [
            (IDR, PictureKind::Idr, true),
            (I_ALL, PictureKind::Intra, true),
            (P, PictureKind::Predicted, true),
            (B_NON_REF, PictureKind::Bipredicted, false),
        ];
        for (slice, kind, reference) in cases {
            let mut es = AUD_SPS.to_vec();
            es.extend_from_slice(slice);
            assert_eq!(
                classify_pes(&pes(&es)),
                Picture { kind, reference },
                "{slice:02x?}"
            );
        }
    }

    #[test]
    fn a_picture_is_intra_only_when_every_slice_is() {
        let mut es = I_SLICE.to_vec();
        es.extend_from_slice(I_ALL);
        assert_eq!(classify_pes(&pes(&es)).kind, PictureKind::Intra);
        es.extend_from_slice(P);
        assert_eq!(classify_pes(&pes(&es)).kind, PictureKind::Predicted);
    }

    #[test]
    fn no_slice_or_no_pes_header_is_unknown() {
        assert_eq!(classify_pes(&pes(AUD_SPS)).kind, PictureKind::Unknown);
        assert_eq!(classify_pes(IDR).kind, PictureKind::Unknown);
        assert_eq!(classify_pes(&[]).kind, PictureKind::Unknown);
        // What cannot be read is taken as a reference, so dropping it leaves a gap.
        assert!(classify_pes(&pes(AUD_SPS)).reference);
    }
}
