//! The XDP program, assembled here as BPF instructions, and the `bpf(2)` calls that create its
//! map, load it and attach it.
//!
//! The program (29 instructions) reads the frame with bounds-checked direct packet
//! access: Ethernet type IPv4, IPv4 without options and not a fragment, protocol UDP, the
//! destination address (when the filter names one) and the destination port inside the
//! filter's range. Such a frame is redirected to the XSKMAP entry of the queue it arrived on
//! (`bpf_redirect_map` with `XDP_PASS` as the fallback when the entry is empty); every other
//! frame gets `XDP_PASS` and goes up the kernel's stack as if no program were there.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::IoError;

// bpf(2) commands (linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` in `enum bpf_attach_type`.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native (driver) mode only; never the generic skb mode.
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// XDP verdicts (`enum xdp_action`).
const XDP_PASS: i32 = 2;
/// `bpf_redirect_map` in `enum bpf_func_id`.
const FN_REDIRECT_MAP: i32 = 51;

/// One BPF instruction (`struct bpf_insn`): opcode, dst and src registers, offset, immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high nibble (little-endian bitfield layout).
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const MOV: u8 = 0xb0;
const END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const JNE: u8 = 0x50;
const JGT: u8 = 0x20;
const JLT: u8 = 0xa0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const PSEUDO_MAP_FD: u8 = 1;

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (dst & 0xf) | (src << 4),
            off,
            imm,
        }
    }
    /// `dst = *(size *)(src + off)`
    const fn load(size: u8, dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(LDX | size | MEM, dst, src, off, 0)
    }
    /// `dst = src` (64-bit)
    const fn mov(dst: u8, src: u8) -> Insn {
        Insn::new(ALU64 | MOV | X, dst, src, 0, 0)
    }
    /// `dst = imm` (64-bit, sign-extended)
    const fn mov_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU64 | MOV | K, dst, 0, 0, imm)
    }
    /// `dst += imm` (64-bit)
    const fn add_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU64 | ADD | K, dst, 0, 0, imm)
    }
    /// `dst &= imm` (32-bit)
    const fn and32_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU | AND | K, dst, 0, 0, imm)
    }
    /// `dst = htobe16(dst)`: a port loaded from the frame turned into its numeric value.
    const fn be16(dst: u8) -> Insn {
        Insn::new(ALU | END | TO_BE, dst, 0, 0, 16)
    }
    /// `if dst OP src goto +off` (64-bit).
    const fn jmp_reg(op: u8, dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(JMP | op | X, dst, src, off, 0)
    }
    /// `if (u32)dst OP (u32)imm goto +off`: a 32-bit compare, so an address above 2^31 is not
    /// sign-extended against a zero-extended load.
    const fn jmp32_imm(op: u8, dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(JMP32 | op | K, dst, 0, off, imm)
    }
    const fn call(func: i32) -> Insn {
        Insn::new(JMP | CALL, 0, 0, 0, func)
    }
    const fn exit() -> Insn {
        Insn::new(JMP | EXIT, 0, 0, 0, 0)
    }
    /// `dst = map` (two instructions: a 64-bit immediate holding the map's fd).
    const fn load_map_fd(dst: u8, fd: RawFd) -> [Insn; 2] {
        [
            Insn::new(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, fd),
            Insn::new(0, 0, 0, 0, 0),
        ]
    }
}

/// Which frames the program takes: UDP over IPv4 to `dst` (any address when `None`) with a
/// destination port in `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpFilter {
    /// The destination address (a multicast group, or the interface's own address).
    pub dst: Option<std::net::Ipv4Addr>,
    /// The first and last destination port taken (a session's group port and its stripe ports).
    pub ports: std::ops::RangeInclusive<u16>,
}

// Frame offsets: Ethernet header 14 bytes, IPv4 without options 20, UDP 8.
const ETH_TYPE: i16 = 12;
const IP_VER_IHL: i16 = 14;
const IP_FRAG: i16 = 20;
const IP_PROTO: i16 = 23;
const IP_DST: i16 = 30;
const UDP_DST: i16 = 36;
const HEADERS: i32 = 42;

/// The program's instructions for `filter`, redirecting to the XSKMAP whose fd is `map_fd`.
pub(crate) fn program(filter: &XdpFilter, map_fd: RawFd) -> Vec<Insn> {
    // Registers: r1 ctx at entry, r6 ctx kept, r2 data, r3 data_end, r4 scratch end, r5 field.
    let mut p = vec![
        Insn::mov(6, 1),
        Insn::load(W, 2, 6, 0), // xdp_md.data
        Insn::load(W, 3, 6, 4), // xdp_md.data_end
        Insn::mov(4, 2),
        Insn::add_imm(4, HEADERS),
    ];
    // Each `pass` jump is patched below to land on the final `r0 = XDP_PASS; exit`.
    let mut to_pass = Vec::new();
    let mut jump_to_pass = |p: &mut Vec<Insn>, insn: Insn| {
        to_pass.push(p.len());
        p.push(insn);
    };
    // Too short for Ethernet + IPv4 + UDP: not ours.
    jump_to_pass(&mut p, Insn::jmp_reg(JGT, 4, 3, 0));
    p.push(Insn::load(H, 5, 2, ETH_TYPE));
    // 0x0800 as loaded little-endian from the frame's big-endian bytes.
    jump_to_pass(&mut p, Insn::jmp32_imm(JNE, 5, 0x0008, 0));
    p.push(Insn::load(B, 5, 2, IP_VER_IHL));
    jump_to_pass(&mut p, Insn::jmp32_imm(JNE, 5, 0x45, 0));
    p.push(Insn::load(B, 5, 2, IP_PROTO));
    jump_to_pass(&mut p, Insn::jmp32_imm(JNE, 5, libc::IPPROTO_UDP, 0));
    // A fragment (more-fragments flag or an offset) goes to the kernel, which reassembles it.
    p.push(Insn::load(H, 5, 2, IP_FRAG));
    p.push(Insn::and32_imm(5, 0xff3f));
    jump_to_pass(&mut p, Insn::jmp32_imm(JNE, 5, 0, 0));
    if let Some(dst) = filter.dst {
        p.push(Insn::load(W, 5, 2, IP_DST));
        let as_loaded = u32::from_le_bytes(dst.octets()) as i32;
        jump_to_pass(&mut p, Insn::jmp32_imm(JNE, 5, as_loaded, 0));
    }
    p.push(Insn::load(H, 5, 2, UDP_DST));
    p.push(Insn::be16(5));
    jump_to_pass(
        &mut p,
        Insn::jmp32_imm(JLT, 5, i32::from(*filter.ports.start()), 0),
    );
    jump_to_pass(
        &mut p,
        Insn::jmp32_imm(JGT, 5, i32::from(*filter.ports.end()), 0),
    );
    // bpf_redirect_map(map, rx_queue_index, XDP_PASS): an empty slot passes the frame.
    p.extend(Insn::load_map_fd(1, map_fd));
    p.push(Insn::load(W, 2, 6, 16)); // xdp_md.rx_queue_index
    p.push(Insn::mov_imm(3, XDP_PASS));
    p.push(Insn::call(FN_REDIRECT_MAP));
    p.push(Insn::exit());
    let pass = p.len();
    p.push(Insn::mov_imm(0, XDP_PASS));
    p.push(Insn::exit());
    for at in to_pass {
        p[at].off = (pass - at - 1) as i16;
    }
    p
}

/// A program that passes every frame (`r0 = XDP_PASS; exit`): attached and detached to learn
/// whether an interface takes native XDP.
pub(crate) fn pass_program() -> Vec<Insn> {
    vec![Insn::mov_imm(0, XDP_PASS), Insn::exit()]
}

/// `bpf(cmd, attr, size)`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` attribute struct of the layout the
    // kernel expects for `cmd` (fields it does not know are zero); we pass its exact size, and
    // every pointer stored in it points to memory that outlives this call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

fn fd_from(
    rc: libc::c_long,
    op: &'static str,
    context: impl Into<String>,
) -> Result<OwnedFd, IoError> {
    if rc < 0 {
        return Err(IoError::last_os(op, context));
    }
    // SAFETY: a non-negative return from these bpf commands is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates an XSKMAP with `entries` slots (one per rx queue).
pub(crate) fn create_xskmap(entries: u32) -> Result<OwnedFd, IoError> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        ..Default::default()
    };
    attr.map_name[..8].copy_from_slice(b"bc_xsks\0");
    fd_from(
        bpf(BPF_MAP_CREATE, &mut attr),
        "bpf(BPF_MAP_CREATE)",
        format!("an XSKMAP of {entries} entries"),
    )
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `map[key] = value_fd`, or the slot emptied when `value_fd` is `None`.
pub(crate) fn set_xskmap(map: &OwnedFd, key: u32, value_fd: Option<RawFd>) -> Result<(), IoError> {
    let value = value_fd.unwrap_or(-1) as u32;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    let (cmd, op) = match value_fd {
        Some(_) => (BPF_MAP_UPDATE_ELEM, "bpf(BPF_MAP_UPDATE_ELEM)"),
        None => (BPF_MAP_DELETE_ELEM, "bpf(BPF_MAP_DELETE_ELEM)"),
    };
    if bpf(cmd, &mut attr) < 0 {
        return Err(IoError::last_os(op, format!("XSKMAP slot {key}")));
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `insns` as an XDP program. When the verifier refuses it, loads it again with the
/// verifier's log on and returns the log's tail in the error.
pub(crate) fn load_xdp(insns: &[Insn]) -> Result<OwnedFd, IoError> {
    let license = CString::new("Dual MIT/GPL").expect("no NUL in the license");
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        attr.prog_name[..8].copy_from_slice(b"bc_xdp\0\0");
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        let rc = bpf(BPF_PROG_LOAD, &mut attr);
        (rc, std::io::Error::last_os_error())
    };
    let (rc, err) = attempt(None);
    if rc >= 0 {
        return fd_from(rc, "bpf(BPF_PROG_LOAD)", "the XDP program");
    }
    let mut log = vec![0u8; 1 << 18];
    let _ = attempt(Some(&mut log));
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(12)..].join(" | ");
    let hint = match err.raw_os_error() {
        Some(libc::EPERM) => " (loading BPF programs needs CAP_BPF and CAP_NET_ADMIN, or root)",
        _ => "",
    };
    Err(IoError::os(
        "bpf(BPF_PROG_LOAD)",
        format!(
            "the XDP program ({} instructions){hint}; verifier: {tail}",
            insns.len()
        ),
        err,
    ))
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Attaches `prog` to interface `ifindex` in native mode through a BPF link: closing the link's
/// fd (dropping it) detaches the program, also when the process dies.
pub(crate) fn attach_xdp(prog: &OwnedFd, ifindex: u32, iface: &str) -> Result<OwnedFd, IoError> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..Default::default()
    };
    let rc = bpf(BPF_LINK_CREATE, &mut attr);
    if rc >= 0 {
        return fd_from(rc, "bpf(BPF_LINK_CREATE, XDP native)", iface);
    }
    let err = std::io::Error::last_os_error();
    let hint = match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => ": its driver has no native XDP",
        Some(libc::EBUSY | libc::EEXIST) => ": another XDP program is attached to it",
        Some(libc::EPERM) => ": attaching XDP needs CAP_NET_ADMIN and CAP_BPF, or root",
        Some(libc::EINVAL) => ": its MTU or settings do not allow XDP",
        _ => "",
    };
    Err(IoError::os(
        "bpf(BPF_LINK_CREATE, XDP native)",
        format!("interface {iface} (index {ifindex}){hint}"),
        err,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pass_jump_lands_on_the_pass_exit() {
        let filter = XdpFilter {
            dst: Some("239.255.1.2".parse().unwrap()),
            ports: 5000..=5003,
        };
        let p = program(&filter, 7);
        let pass = p.len() - 2;
        assert_eq!(p[pass], Insn::mov_imm(0, XDP_PASS));
        let mut jumps = 0;
        for (at, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if (class == JMP || class == JMP32) && op != CALL && op != EXIT {
                assert_eq!(at + 1 + insn.off as usize, pass, "jump at {at}");
                jumps += 1;
            }
        }
        // length, ether type, version/IHL, protocol, fragment, address, two port bounds
        assert_eq!(jumps, 8);
    }

    #[test]
    fn the_address_compare_is_32_bit() {
        let filter = XdpFilter {
            dst: Some("239.255.1.2".parse().unwrap()),
            ports: 1..=1,
        };
        let p = program(&filter, 3);
        let addr = p
            .iter()
            .find(|i| i.imm == u32::from_le_bytes([239, 255, 1, 2]) as i32)
            .expect("address compare");
        assert_eq!(addr.code & 0x07, JMP32);
    }

    /// Root only (loading a program needs CAP_BPF): skipped with the reason elsewhere, failed
    /// under `CI=true`.
    #[test]
    fn a_refused_program_says_what_the_verifier_said() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "loading BPF needs root (CI=true: this test must run)"
            );
            eprintln!("skipped: loading BPF needs root");
            return;
        }
        // A packet load without the bounds check the verifier demands.
        let bad = [Insn::load(W, 2, 1, 0), Insn::load(B, 0, 2, 0), Insn::exit()];
        let err = load_xdp(&bad).expect_err("the verifier refuses an unchecked packet load");
        let text = err.to_string();
        assert!(
            text.contains("verifier:") && text.contains("invalid access to packet"),
            "{text}"
        );
        // And the real program loads.
        let map = create_xskmap(4).expect("an XSKMAP");
        let filter = XdpFilter {
            dst: Some("239.255.1.2".parse().unwrap()),
            ports: 5000..=5063,
        };
        load_xdp(&program(&filter, map.as_raw_fd())).expect("the verifier takes the program");
    }
}
