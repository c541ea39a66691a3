//! A network-namespace lab for end-to-end tests of the real binary across several hosts.
//!
//! Root only: [`Lab::skip_reason`] says why a test cannot run here (not root, `ip` or `nft`
//! missing); tests hand it to [`can_run`](super::can_run), which skips them with the reason,
//! or fails them under CI. A [`Lab`] creates uniquely named namespaces
//! (`bc<pid>-<tag>-<name>`): one hub namespace holding Linux bridges, and one namespace per node
//! with a veth pair to its bridge, an address in `10.<net>.<bridge>.0/24`, `lo` up and IPv6 off
//! (no router solicitations or MLD reports: the only multicast a node sends is the test's).
//! Nothing in a lab is routed to the machine's own interfaces: a packet can only reach another
//! namespace of the same lab.
//!
//! Processes run inside a node with [`Lab::spawn`] (`ip netns exec NS blockcast ...`, which
//! execs, so the child's pid is blockcast's). Loss and a multicast ban are nftables rules inside
//! a node ([`Lab::drop_udp`], [`Lab::drop_multicast`]). Dropping the lab deletes every namespace
//! it made, also when the test panics; declare the lab before the [`Proc`]s that run in it, so
//! they are killed (dropped) first. [`Proc::kill`] kills one process mid-run.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Out, Proc, BIN};

/// One node: a namespace with one address on one bridge.
#[derive(Clone, Debug)]
pub struct Node {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The node's interface name inside its namespace.
    pub iface: &'static str,
}

/// A set of namespaces owned by one test; deleted on drop.
pub struct Lab {
    prefix: String,
    net: u8,
    hub: String,
    bridges: usize,
    hosts: Vec<u8>,
    /// Every namespace created, hub first; deleted in reverse on drop.
    made: Vec<String>,
}

/// Runs `cmd` and panics with its output if it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn in_ns(ns: &str, args: &[&str]) {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args));
}

fn nft_in(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft in {ns} failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tool_missing(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
}

/// The sum of the `packets N` counters in `nft list` output.
fn packets_counted(text: &str) -> u64 {
    let mut words = text.split_whitespace();
    let mut n = 0;
    while let Some(w) = words.next() {
        if w == "packets" {
            n += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    n
}

/// The namespaces `ip netns list` shows.
pub fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

impl Lab {
    /// Why labs cannot be made here, or `None` when they can.
    pub fn skip_reason() -> Option<String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        if euid != "0" {
            return Some(format!(
                "network-namespace tests need root (effective uid {euid:?})"
            ));
        }
        for tool in ["ip", "nft"] {
            if tool_missing(tool) {
                return Some(format!("network-namespace tests need `{tool}` installed"));
            }
        }
        None
    }

    /// A new lab; `tag` (a few letters) names the test, `net` picks the second octet of its
    /// addresses (`10.<net>.<bridge>.<host>`). Namespaces are isolated, so labs of tests that
    /// run at once may use the same `net`.
    pub fn new(tag: &str, net: u8) -> Lab {
        let prefix = format!("bc{}-{tag}", std::process::id());
        let hub = format!("{prefix}-hub");
        let mut lab = Lab {
            prefix,
            net,
            hub: hub.clone(),
            bridges: 0,
            hosts: Vec::new(),
            made: Vec::new(),
        };
        // A namespace left by an earlier run with the same pid is removed first.
        let _ = Command::new("ip").args(["netns", "del", &hub]).output();
        ip(&["netns", "add", &hub]);
        lab.made.push(hub.clone());
        in_ns(&hub, &["ip", "link", "set", "lo", "up"]);
        lab
    }

    /// Adds a bridge in the hub (IGMP snooping off: it floods multicast like a plain switch);
    /// returns its number, the third octet of its nodes' addresses.
    pub fn add_bridge(&mut self) -> u8 {
        let n = self.bridges as u8;
        self.bridges += 1;
        self.hosts.push(0);
        let name = format!("br{n}");
        in_ns(
            &self.hub,
            &[
                "ip",
                "link",
                "add",
                &name,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        in_ns(&self.hub, &["ip", "link", "set", &name, "up"]);
        n
    }

    /// Adds a node named `name` on bridge `bridge`, with the next free host address.
    pub fn add_node(&mut self, name: &str, bridge: u8) -> Node {
        let b = usize::from(bridge);
        assert!(b < self.bridges, "no bridge {bridge}");
        self.hosts[b] += 1;
        let host = self.hosts[b];
        assert!(host < 255, "bridge {bridge} is full");
        let ns = format!("{}-{name}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.made.push(ns.clone());
        let addr = Ipv4Addr::new(10, self.net, bridge, host);
        let port = format!("p{bridge}-{host}");
        // The veth pair is made in the hub; one end moves into the node as `veth0`.
        in_ns(
            &self.hub,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "veth0", "netns", &ns,
            ],
        );
        in_ns(
            &self.hub,
            &["ip", "link", "set", &port, "master", &format!("br{bridge}")],
        );
        in_ns(&self.hub, &["ip", "link", "set", &port, "up"]);
        in_ns(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        in_ns(
            &ns,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        in_ns(
            &ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", "veth0"],
        );
        in_ns(&ns, &["ip", "link", "set", "veth0", "up"]);
        Node {
            ns,
            addr,
            iface: "veth0",
        }
    }

    /// Gives `node` a second interface, `veth1`, on bridge `bridge` (a relay between two
    /// segments); returns that side of the node.
    pub fn attach(&mut self, node: &Node, bridge: u8) -> Node {
        let b = usize::from(bridge);
        assert!(b < self.bridges, "no bridge {bridge}");
        self.hosts[b] += 1;
        let host = self.hosts[b];
        assert!(host < 255, "bridge {bridge} is full");
        let addr = Ipv4Addr::new(10, self.net, bridge, host);
        let port = format!("p{bridge}-{host}");
        in_ns(
            &self.hub,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "veth1", "netns",
                &node.ns,
            ],
        );
        in_ns(
            &self.hub,
            &["ip", "link", "set", &port, "master", &format!("br{bridge}")],
        );
        in_ns(&self.hub, &["ip", "link", "set", &port, "up"]);
        in_ns(
            &node.ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", "veth1"],
        );
        in_ns(&node.ns, &["ip", "link", "set", "veth1", "up"]);
        Node {
            ns: node.ns.clone(),
            addr,
            iface: "veth1",
        }
    }

    /// Starts `blockcast args...` inside `node` with stdin closed, stdout and stderr in files of
    /// `dir` (see [`Proc`]).
    pub fn spawn<I, S>(&self, node: &Node, dir: &Path, name: &str, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        Proc::start(
            dir,
            name,
            Command::new("ip")
                .args(["netns", "exec", &node.ns, BIN])
                .args(&args)
                .stdin(Stdio::null()),
            Out::File,
        )
    }

    /// `blockcast serve SRC --group GROUP --iface <node's address> --json`, then `extra`,
    /// inside `node` (the process is named "server").
    pub fn serve(&self, node: &Node, dir: &Path, src: &Path, group: &str, extra: &[&str]) -> Proc {
        let mut args: Vec<OsString> = vec!["serve".into(), src.into()];
        let iface = node.addr.to_string();
        for a in ["--group", group, "--iface", &iface, "--json"] {
            args.push(a.into());
        }
        args.extend(extra.iter().map(OsString::from));
        self.spawn(node, dir, "server", args)
    }

    /// `blockcast receive --group GROUP --iface <node's address> --out OUT --json`, then
    /// `extra`, inside `node`.
    pub fn receive(
        &self,
        node: &Node,
        dir: &Path,
        name: &str,
        group: &str,
        out: &Path,
        extra: &[&str],
    ) -> Proc {
        let mut args: Vec<OsString> = vec!["receive".into(), "--out".into(), out.into()];
        let iface = node.addr.to_string();
        for a in ["--group", group, "--iface", &iface, "--json"] {
            args.push(a.into());
        }
        args.extend(extra.iter().map(OsString::from));
        self.spawn(node, dir, name, args)
    }

    /// Limits what the hub sends toward `node` (its downlink) to `rate` (tc's units, such as
    /// `128kbit`) with a token bucket filter of a 4 KB bucket, as a slow client's link.
    pub fn shape(&self, node: &Node, rate: &str) {
        let [_, _, bridge, host] = node.addr.octets();
        let port = format!("p{bridge}-{host}");
        in_ns(
            &self.hub,
            &[
                "tc", "qdisc", "add", "dev", &port, "root", "tbf", "rate", rate, "burst", "4kb",
                "latency", "400ms",
            ],
        );
    }

    /// Drops `permille`/1000 of the UDP datagrams that arrive at `node`, at random
    /// (`numgen random mod 1000 < permille`). One table per node holds every rule of this lab.
    pub fn drop_udp(&self, node: &Node, permille: u32) {
        nft_in(
            &node.ns,
            &format!(
                "table inet bc_loss {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    meta l4proto udp numgen random mod 1000 < {permille} counter drop\n  }}\n}}\n"
            ),
        );
    }

    /// Makes `node`'s interface take at most one segment per GSO packet, so the kernel cuts
    /// a UDP GSO super-buffer into datagrams as it leaves `node`: rules on the bridge then
    /// see (and drop) datagrams one by one, not 64 KB at a time.
    pub fn segment_leaving(&self, node: &Node) {
        in_ns(
            &node.ns,
            &["ip", "link", "set", "dev", node.iface, "gso_max_segs", "1"],
        );
    }

    /// Drops `permille`/1000 of the UDP frames the hub's bridge forwards to `node`, at random,
    /// and counts them ([`Lab::dropped_toward`]). Unlike [`Lab::drop_udp`] this happens before
    /// the frames reach the node, so an XDP program there (which sees frames before the
    /// node's nftables) sees the loss too.
    pub fn drop_udp_toward(&self, node: &Node, permille: u32) {
        let [_, _, bridge, host] = node.addr.octets();
        nft_in(
            &self.hub,
            &format!(
                "table bridge bc_loss_{bridge}_{host} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    oifname \"p{bridge}-{host}\" meta l4proto udp numgen random mod 1000 < {permille} counter drop\n  }}\n}}\n"
            ),
        );
    }

    /// Frames [`Lab::drop_udp_toward`] dropped toward `node` so far.
    pub fn dropped_toward(&self, node: &Node) -> u64 {
        let [_, _, bridge, host] = node.addr.octets();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hub, "nft", "list", "table", "bridge"])
            .arg(format!("bc_loss_{bridge}_{host}"))
            .output()
            .expect("run nft list");
        assert!(out.status.success(), "nft list in {}", self.hub);
        packets_counted(&String::from_utf8_lossy(&out.stdout))
    }

    /// Drops every UDP datagram to `group` that reaches `node`'s own input (its kernel's UDP
    /// sockets); frames an XDP program takes before that are not touched.
    pub fn ban_group_input(&self, node: &Node, group: &str) {
        let (addr, port) = group.split_once(':').expect("GROUP:PORT");
        nft_in(
            &node.ns,
            &format!(
                "table inet bc_noinput {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    ip daddr {addr} udp dport {port} counter drop\n  }}\n}}\n"
            ),
        );
    }

    /// Drops (and counts) every IPv4 multicast datagram `node` sends or receives, so a mode run
    /// there provably does without multicast; read the count with [`Lab::multicast_dropped`].
    pub fn drop_multicast(&self, node: &Node) {
        nft_in(
            &node.ns,
            "table inet bc_nomcast {\n  chain input {\n    type filter hook input priority -10; policy accept;\n    ip daddr 224.0.0.0/4 counter drop\n    meta pkttype multicast counter drop\n  }\n  chain output {\n    type filter hook output priority -10; policy accept;\n    ip daddr 224.0.0.0/4 counter drop\n  }\n}\n",
        );
    }

    /// Multicast datagrams the [`Lab::drop_multicast`] rules of `node` dropped so far.
    pub fn multicast_dropped(&self, node: &Node) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &node.ns, "nft", "list", "table", "inet"])
            .arg("bc_nomcast")
            .output()
            .expect("run nft list");
        assert!(out.status.success(), "nft list in {}", node.ns);
        packets_counted(&String::from_utf8_lossy(&out.stdout))
    }

    /// The namespaces this lab made (hub first).
    pub fn namespaces(&self) -> &[String] {
        &self.made
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Node namespaces first (their veth ends go with them), then the hub and its bridges.
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
