//! Network interfaces: list them, and resolve the one a multicast socket must use.
//!
//! blockcast never lets the kernel pick the multicast interface (the default route would send
//! a group's packets out of the wrong NIC), so every sender and receiver is given an interface
//! explicitly; [`resolve_ipv4`] turns what the user typed (`lo`, `eth1`, `127.0.0.1`) into
//! the IPv4 address that the socket options take.

use std::ffi::CStr;
use std::net::Ipv4Addr;

use crate::error::IoError;

/// One network interface and its IPv4 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The kernel's name for it (`lo`, `eth0`).
    pub name: String,
    /// Its IPv4 addresses, in the order the kernel lists them (may be empty).
    pub ipv4: Vec<Ipv4Addr>,
    /// `IFF_UP` is set.
    pub up: bool,
    /// `IFF_LOOPBACK` is set.
    pub loopback: bool,
    /// `IFF_MULTICAST` is set (loopback does multicast without the flag).
    pub multicast: bool,
}

impl Interface {
    /// `name (a.b.c.d, ...)`, as listed in errors.
    fn describe(&self) -> String {
        if self.ipv4.is_empty() {
            format!("{} (no IPv4)", self.name)
        } else {
            let addrs: Vec<String> = self.ipv4.iter().map(Ipv4Addr::to_string).collect();
            format!("{} ({})", self.name, addrs.join(", "))
        }
    }
}

/// Lists the interfaces of this host (this network namespace), one entry per name.
///
/// Call it to show the user what exists; [`resolve_ipv4`] uses it to build its error.
pub fn list() -> Result<Vec<Interface>, IoError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocates into `head`; the list is
    // freed below with freeifaddrs and nothing borrowed from it outlives this function.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(IoError::last_os("getifaddrs", "this host"));
    }
    let mut out: Vec<Interface> = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, still allocated.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a non-null, NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = ifa.ifa_flags;
        let idx = match out.iter().position(|i| i.name == name) {
            Some(idx) => idx,
            None => {
                out.push(Interface {
                    name,
                    ipv4: Vec::new(),
                    up: flags & libc::IFF_UP as u32 != 0,
                    loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
                    multicast: flags & libc::IFF_MULTICAST as u32 != 0,
                });
                out.len() - 1
            }
        };
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least the family field.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) == libc::AF_INET {
            // SAFETY: the family is AF_INET, so the kernel stored a full sockaddr_in there.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            out[idx].ipv4.push(addr);
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Resolves an interface given by name (`lo`) or by one of its IPv4 addresses (`127.0.0.1`)
/// to the IPv4 address that `IP_MULTICAST_IF` and `IP_ADD_MEMBERSHIP` take.
///
/// Call it once at setup with what the user typed. An interface with several IPv4 addresses
/// resolves to the first. The error lists the interfaces that exist.
pub fn resolve_ipv4(name_or_addr: &str) -> Result<Ipv4Addr, IoError> {
    let all = list()?;
    let fail = |reason: &'static str| IoError::NoSuchInterface {
        name: name_or_addr.to_string(),
        reason,
        available: all.iter().map(Interface::describe).collect(),
    };
    if let Ok(addr) = name_or_addr.parse::<Ipv4Addr>() {
        return if all.iter().any(|i| i.ipv4.contains(&addr)) {
            Ok(addr)
        } else {
            Err(fail("no interface has this address"))
        };
    }
    match all.iter().find(|i| i.name == name_or_addr) {
        None => Err(fail("no such interface")),
        Some(i) => i
            .ipv4
            .first()
            .copied()
            .ok_or_else(|| fail("has no IPv4 address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_and_resolves() {
        let all = list().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo exists");
        assert!(lo.loopback);
        assert!(lo.ipv4.contains(&Ipv4Addr::LOCALHOST));
        assert_eq!(resolve_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(resolve_ipv4("127.0.0.1").unwrap(), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn unknown_name_lists_existing_interfaces() {
        let err = resolve_ipv4("nosuchif0").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nosuchif0"), "{msg}");
        assert!(msg.contains("no such interface"), "{msg}");
        assert!(msg.contains("lo (127.0.0.1"), "{msg}");
        match err {
            IoError::NoSuchInterface { available, .. } => {
                assert!(available.iter().any(|a| a.starts_with("lo ")))
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn address_not_on_any_interface_is_rejected() {
        // 203.0.113.0/24 (TEST-NET-3) is documentation space; no host here uses it.
        let err = resolve_ipv4("203.0.113.254").unwrap_err();
        assert!(err.to_string().contains("no interface has this address"));
    }
}
