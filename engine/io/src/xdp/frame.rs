//! Ethernet + IPv4 + UDP headers: built once per destination for sending, checked when
//! received.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Bytes of the Ethernet, IPv4 (no options) and UDP headers in front of a payload.
pub const FRAME_HEADERS: usize = 14 + 20 + 8;

/// The Ethernet address of an IPv4 multicast group: 01:00:5e followed by the low 23 bits of
/// the group address (RFC 1112, section 6.4).
pub fn multicast_mac(group: Ipv4Addr) -> [u8; 6] {
    let o = group.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

/// The one's-complement sum of 16-bit big-endian words (the Internet checksum, RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The headers of every frame from one source to one destination, built once; each frame
/// fills in only its lengths, its IPv4 identification and the IPv4 checksum. The UDP checksum
/// is 0 (none), which IPv4 allows; the payload is protected by the protocol's own hashes.
#[derive(Clone, Debug)]
pub struct UdpFrameHeader {
    bytes: [u8; FRAME_HEADERS],
    next_id: u16,
}

impl UdpFrameHeader {
    /// Headers from `src` (with Ethernet address `src_mac`) to `dst` (at `dst_mac`; for a
    /// group, [`multicast_mac`]), with IPv4 time-to-live `ttl`.
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
        ttl: u8,
    ) -> UdpFrameHeader {
        let mut b = [0u8; FRAME_HEADERS];
        b[0..6].copy_from_slice(&dst_mac);
        b[6..12].copy_from_slice(&src_mac);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        b[14] = 0x45;
        // Don't fragment: a unit is one datagram that fits the path's MTU.
        b[20..22].copy_from_slice(&0x4000u16.to_be_bytes());
        b[22] = ttl;
        b[23] = libc::IPPROTO_UDP as u8;
        b[26..30].copy_from_slice(&src.ip().octets());
        b[30..34].copy_from_slice(&dst.ip().octets());
        b[34..36].copy_from_slice(&src.port().to_be_bytes());
        b[36..38].copy_from_slice(&dst.port().to_be_bytes());
        UdpFrameHeader {
            bytes: b,
            next_id: 0,
        }
    }

    /// Writes the headers for a payload of `payload_len` bytes at the start of `frame`;
    /// returns the frame's length (headers + payload), or `None` when the frame is too short
    /// or the payload too long for one IPv4 datagram.
    pub fn write(&mut self, frame: &mut [u8], payload_len: usize) -> Option<usize> {
        let total = FRAME_HEADERS + payload_len;
        let ip_len = u16::try_from(total - 14).ok()?;
        if total > frame.len() {
            return None;
        }
        let head = &mut frame[..FRAME_HEADERS];
        head.copy_from_slice(&self.bytes);
        head[16..18].copy_from_slice(&ip_len.to_be_bytes());
        head[18..20].copy_from_slice(&self.next_id.to_be_bytes());
        self.next_id = self.next_id.wrapping_add(1);
        let sum = checksum(&head[14..34]);
        head[24..26].copy_from_slice(&sum.to_be_bytes());
        head[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        Some(total)
    }
}

/// A UDP datagram found in an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    /// The sender's address and port.
    pub src: SocketAddrV4,
    /// The destination address and port.
    pub dst: SocketAddrV4,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// The UDP datagram in `frame` (Ethernet II, IPv4 with or without options, not a fragment),
/// or `None`; every length is checked against the frame, so any bytes are safe to pass.
pub fn parse_udp(frame: &[u8]) -> Option<UdpFrame<'_>> {
    let (src, dst, at) = udp_payload_range(frame)?;
    Some(UdpFrame {
        src,
        dst,
        payload: &frame[at],
    })
}

/// What [`parse_udp`] finds, with the payload as its range in `frame` (to open it in place).
pub fn udp_payload_range(
    frame: &[u8],
) -> Option<(SocketAddrV4, SocketAddrV4, std::ops::Range<usize>)> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ver_ihl = *ip.first()?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || ip.len() < ihl + 8 || ip[9] != libc::IPPROTO_UDP as u8 {
        return None;
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip_len < ihl + 8 || ip_len > ip.len() {
        return None;
    }
    let udp = &ip[ihl..ip_len];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let start = 14 + ihl + 8;
    Some((
        SocketAddrV4::new(addr(12), u16::from_be_bytes([udp[0], udp[1]])),
        SocketAddrV4::new(addr(16), u16::from_be_bytes([udp[2], udp[3]])),
        start..start + udp_len - 8,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_maps_to_its_low_23_bits() {
        assert_eq!(
            multicast_mac("239.255.1.2".parse().unwrap()),
            [0x01, 0x00, 0x5e, 0x7f, 0x01, 0x02]
        );
        assert_eq!(
            multicast_mac("224.128.0.1".parse().unwrap()),
            [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]
        );
    }

    #[test]
    fn a_built_frame_parses_back_with_a_valid_ip_checksum() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(239, 255, 3, 4), 5000);
        let mut h = UdpFrameHeader::new([2; 6], multicast_mac(*dst.ip()), src, dst, 1);
        let mut frame = vec![0u8; 2048];
        let payload = b"unit bytes";
        frame[FRAME_HEADERS..FRAME_HEADERS + payload.len()].copy_from_slice(payload);
        let len = h.write(&mut frame, payload.len()).unwrap();
        assert_eq!(len, FRAME_HEADERS + payload.len());
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&frame[14..34]), 0);
        let udp = parse_udp(&frame[..len]).unwrap();
        assert_eq!((udp.src, udp.dst, udp.payload), (src, dst, &payload[..]));
        // Lengths beyond the frame are refused, not trusted.
        assert_eq!(parse_udp(&frame[..len - 1]), None);
    }

    #[test]
    fn parsing_never_panics_on_truncations_of_a_frame() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 1);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 2);
        let mut h = UdpFrameHeader::new([2; 6], [4; 6], src, dst, 64);
        let mut frame = vec![0xa5u8; 200];
        let len = h.write(&mut frame, 100).unwrap();
        for cut in 0..len {
            let _ = parse_udp(&frame[..cut]);
            let mut bent = frame[..len].to_vec();
            bent[cut] ^= 0xff;
            let _ = parse_udp(&bent);
        }
    }
}
