//! The few socket options that socket2 does not cover (`UDP_GRO`, `UDP_SEGMENT`,
//! `SO_RCVBUFFORCE`, `SO_NO_CHECK`, ...), set with libc in one audited place.

use std::os::fd::RawFd;

use crate::error::IoError;

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    op: &'static str,
) -> Result<(), IoError> {
    // SAFETY: the option value is a valid c_int on the stack whose size we pass; the kernel
    // only reads it during the call. A bad fd or option is reported as an error, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(IoError::last_os(op, format!("fd {fd}")))
    }
}

/// `getsockopt(fd, level, name)` for an int-valued option.
pub(crate) fn getsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    op: &'static str,
) -> Result<libc::c_int, IoError> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes for the duration of the call and `len`
    // holds the size of `value`; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(IoError::last_os(op, format!("fd {fd}")))
    }
}

/// Converts a `sockaddr_in` filled by the kernel into a Rust address.
pub(crate) fn sockaddr_in_to_std(sin: &libc::sockaddr_in) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    )
}

/// Converts a Rust address into a `sockaddr_in` for the kernel.
pub(crate) fn sockaddr_in_from_std(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is a plain C struct of integers; all-zero is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = a.port().to_be();
    sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sin
}
