//! `blockcast`: send files to many receivers at once over multicast UDP.
#![forbid(unsafe_code)]

mod daemon;
mod demo;
mod exit;
mod json;
mod output;
mod units;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use blockcast_node::play::{PlayTo, StartAt};
use blockcast_node::{collect_inputs, Downstream, ReceiveConfig, RelayConfig, ServeConfig};
use blockcast_proto::Geometry;
#[allow(unused_imports)]
use clap::CommandFactory;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "blockcast",
    version,
    about = "Send large files to many receivers at once over multicast UDP, verified block by block"
)]
pub(crate) struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print one JSON summary on stdout (progress bars are off).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve files or directories to every receiver on a group.
    Serve(ServeArgs),
    /// Join a group and store what its server sends.
    Receive(ReceiveArgs),
    /// Receive from an upstream group and serve the same content to downstream groups,
    /// block by block as it is verified (fan-out across subnets; feedback stops here).
    Relay(RelayArgs),
    /// The whole thing on this machine's loopback: a sample file, a server and three receivers.
    Demo(DemoArgs),
    /// Measure on loopback: GB/s, packets/s, CPU per GB, repairs, block-completion latency.
    Bench(BenchArgs),
    /// Hash files or directories into the hash cache now (as `serve` would before sending), so
    /// that serving them later starts at once; prints each object's BLAKE3.
    Hash(HashArgs),
    /// Make a signing key pair: NAME.key (the secret, mode 0600; give it to serve --sign) and
    /// NAME.pub (give it to receivers: receive --trust NAME.pub). With --secret FILE, make a
    /// closed group's secret instead. Never overwrites a key.
    Keygen(KeygenArgs),
    /// Serve a catalog directory on request: clients ask for objects by name (fetch, agent,
    /// the HTTP API) and every object being asked for is sent in a session of its own, on a
    /// group from the pool, requests that come together sharing one session.
    Origin(OriginArgs),
    /// Ask an origin for objects by name and receive them into a directory (once; an
    /// interrupted fetch resumes, an object already whole is not fetched again).
    Fetch(FetchArgs),
    /// Keep a directory in sync with an origin's catalog (all of it, or the names or globs
    /// subscribed to): fetch new and changed objects, verify, run a hook per object.
    Agent(AgentArgs),
    /// Serve an origin's objects to HTTP clients (players, curl) from a RAM tier and a disk
    /// tier: a miss fills the object from the origin once for all its clients, who are served
    /// block by block as it arrives; /NAME?rendition=critical is its key frames only
    /// (MPEG-TS, H.264/H.265); /status shows objects, tiers, fills and clients. The disk tier
    /// and its index survive a restart. Not yet: switching a slow client to the critical
    /// rendition by itself, relay membership.
    Edge(EdgeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page, or write one page per command into a directory.
    Man(ManArgs),
}

#[derive(Args, Debug)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
struct ManArgs {
    /// Write blockcast.1 and blockcast-COMMAND.1 here instead of printing blockcast.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// The operations surface every long-running command shares.
#[derive(Args, Debug)]
struct OpsArgs {
    /// A TOML file whose keys are this command's long flag names (e.g. `iface = "eth1"`,
    /// `subscribe = ["*.iso"]`); flags and BLOCKCAST_* variables override it.
    #[arg(long, env = "BLOCKCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, env = "BLOCKCAST_METRICS", value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Append events as NDJSON to this file ("-": standard output).
    #[arg(long, env = "BLOCKCAST_EVENTS", value_name = "PATH")]
    events: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct OriginArgs {
    /// The catalog: a directory whose files are the objects, named by their path in it (names
    /// with a component starting with "." are not published).
    #[arg(long, env = "BLOCKCAST_CATALOG", value_name = "DIR")]
    catalog: PathBuf,
    /// Interface sessions send through (name or IPv4 address).
    #[arg(long, env = "BLOCKCAST_IFACE")]
    iface: String,
    /// Where requests arrive (UDP), e.g. 10.0.0.1:9100.
    #[arg(long, env = "BLOCKCAST_LISTEN", value_name = "ADDR:PORT")]
    listen: String,
    /// The pool of multicast groups sessions take theirs from, e.g. 239.255.3.0/24.
    #[arg(long, env = "BLOCKCAST_GROUPS", value_name = "PREFIX")]
    groups: String,
    /// The port of every session's group (data thread s sends on port + s).
    #[arg(long, env = "BLOCKCAST_DATA_PORT", default_value_t = 9000)]
    data_port: u16,
    /// Seconds a new session waits for more requests before its first pass.
    #[arg(long, env = "BLOCKCAST_BATCH_WINDOW", default_value_t = 0.2)]
    batch_window: f64,
    /// Seconds after the window that the first pass waits for granted receivers to join.
    #[arg(long, default_value_t = 2.0)]
    join_grace: f64,
    /// Data threads per session (spread over the cores with the other sessions').
    #[arg(long, env = "BLOCKCAST_THREADS", default_value_t = 1)]
    threads: usize,
    /// Sessions at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Send rate per session (README, "Sizes and rates"), or auto to follow its receivers.
    #[arg(long, env = "BLOCKCAST_RATE", default_value = "auto")]
    rate: String,
    #[arg(long, default_value_t = 1)]
    ttl: u32,
    #[arg(long, default_value_t = 1400)]
    unit_size: u16,
    #[arg(long, default_value_t = 749)]
    units_per_block: u16,
    /// Sign the catalog and every session with this key (NAME.key from `blockcast keygen`).
    #[arg(long, env = "BLOCKCAST_SIGN", value_name = "KEY.key")]
    sign: Option<PathBuf>,
    /// Where hashes are kept between runs (default: $XDG_CACHE_HOME/blockcast/hashes).
    #[arg(long, env = "BLOCKCAST_HASH_CACHE", value_name = "DIR")]
    hash_cache: Option<PathBuf>,
    #[arg(long, conflicts_with = "hash_cache")]
    no_hash_cache: bool,
    /// Publish the critical (key-frame) rendition of each MPEG-TS file (H.264 or H.265) as a
    /// second object, `.critical/<the file's BLAKE3>`, made when the file enters the catalog
    /// and kept in DIR (outside the catalog); an edge serves it for ?rendition=critical.
    #[arg(long, env = "BLOCKCAST_CRITICAL", value_name = "DIR")]
    critical: Option<PathBuf>,
    /// Seconds between scans of the catalog directory.
    #[arg(long, default_value_t = 1.0)]
    rescan: f64,
    /// Seconds a file must be left alone before it is hashed and published.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Answers per second to requests and catalog queries, all clients together (a storm is
    /// answered at this rate, the rest dropped).
    #[arg(long, default_value_t = 2000.0)]
    answers_per_sec: f64,
    /// Drop a receiver not heard from for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    receiver_timeout: f64,
    /// Serve the HTTP API (GET /catalog, /sessions, /objects/NAME; POST
    /// /objects/NAME/request) on this address.
    #[arg(long, env = "BLOCKCAST_HTTP", value_name = "ADDR:PORT")]
    http: Option<String>,
    #[command(flatten)]
    ops: OpsArgs,
}

#[derive(Args, Debug)]
pub(crate) struct FetchArgs {
    /// Object names, as the origin's catalog lists them.
    #[arg(required = true)]
    names: Vec<String>,
    /// The origin's listen address.
    #[arg(long, env = "BLOCKCAST_ORIGIN", value_name = "ADDR:PORT")]
    origin: String,
    /// Interface to use (name or IPv4 address).
    #[arg(long, env = "BLOCKCAST_IFACE")]
    iface: String,
    /// The directory objects are stored in, under their names.
    #[arg(long)]
    out: PathBuf,
    /// Give up on a session not heard from for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Give up on a request the origin does not answer (or keeps saying wait) for this many
    /// seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Objects received at once (default: all).
    #[arg(long)]
    parallel: Option<usize>,
    #[arg(long, default_value_t = 32 << 20)]
    rcvbuf: usize,
    /// Receive threads per object.
    #[arg(long)]
    threads: Option<usize>,
    /// Append events as NDJSON to this file ("-": standard output).
    #[arg(long, value_name = "PATH")]
    events: Option<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// The origin's listen address.
    #[arg(long, env = "BLOCKCAST_ORIGIN", value_name = "ADDR:PORT")]
    origin: String,
    /// Interface to use (name or IPv4 address).
    #[arg(long, env = "BLOCKCAST_IFACE")]
    iface: String,
    /// The directory kept in sync (objects under their names).
    #[arg(long, env = "BLOCKCAST_DIR")]
    dir: PathBuf,
    /// Where the agent records what it holds (default: DIR/.blockcast-agent).
    #[arg(long, env = "BLOCKCAST_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep only objects whose names match (a glob: *.iso, images/**, v[0-9].bin); repeat
    /// for more. None: the whole catalog.
    #[arg(long, value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// Transfers at once.
    #[arg(long, env = "BLOCKCAST_CONCURRENCY", default_value_t = 2)]
    concurrency: usize,
    /// Run this with sh -c after each object is in place (BLOCKCAST_OBJECT, BLOCKCAST_PATH,
    /// BLOCKCAST_BYTES, BLOCKCAST_BLAKE3 in its environment).
    #[arg(long, env = "BLOCKCAST_HOOK", value_name = "COMMAND")]
    hook: Option<String>,
    /// Seconds between looks at the catalog.
    #[arg(long, env = "BLOCKCAST_POLL", default_value_t = 5.0)]
    poll: f64,
    /// Exit once everything subscribed is held.
    #[arg(long)]
    once: bool,
    /// Give up on a session not heard from for this many seconds (tried again later).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Give up on a request or catalog the origin does not answer for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    #[arg(long, default_value_t = 32 << 20)]
    rcvbuf: usize,
    /// Receive threads per transfer.
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    ops: OpsArgs,
}

#[derive(Args, Debug)]
pub(crate) struct EdgeArgs {
    /// The origin's listen address: names not yet cached are asked of it. Without it the
    /// edge serves what its --group sessions announce.
    #[arg(
        long,
        env = "BLOCKCAST_ORIGIN",
        value_name = "ADDR:PORT",
        required_unless_present = "group"
    )]
    origin: Option<String>,
    /// Sit on this multicast group as a member and take every object announced there into
    /// the tiers, e.g. 239.255.0.1:9000 (repeat for several groups).
    #[arg(long, value_name = "GROUP:PORT")]
    group: Vec<String>,
    /// Interface toward the origin and the groups (name or IPv4 address).
    #[arg(long, env = "BLOCKCAST_IFACE")]
    iface: String,
    /// Where clients connect, e.g. 10.0.1.1:8080 (exactly this address is bound).
    #[arg(long, env = "BLOCKCAST_HTTP", value_name = "ADDR:PORT")]
    http: String,
    /// The RAM tier's size (README, "Sizes and rates").
    #[arg(long, env = "BLOCKCAST_RAM", value_name = "SIZE")]
    ram: String,
    /// The disk tier's directory (blocks under DIR/blocks, the objects' descriptions under
    /// DIR/objects, fills' staging under DIR/staging).
    #[arg(long, env = "BLOCKCAST_DISK", value_name = "DIR")]
    disk: PathBuf,
    /// The disk tier's size.
    #[arg(long, env = "BLOCKCAST_DISK_SIZE", value_name = "SIZE")]
    disk_size: String,
    /// Seconds a client waits for an object's description or one block before 504.
    #[arg(long, default_value_t = 30.0)]
    wait_timeout: f64,
    /// Give up on a fill whose session is not heard from for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Give up on a request the origin does not answer for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Client connections at once (more get 503).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    #[arg(long, default_value_t = 32 << 20)]
    rcvbuf: usize,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    ops: OpsArgs,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["name", "secret"])))]
struct KeygenArgs {
    /// Path and name of the key pair, without suffix: NAME.key and NAME.pub are written.
    name: Option<PathBuf>,
    /// Write a closed group's secret (32 random bytes, mode 0600) to FILE instead: give the
    /// same file to serve, receive and relay as --secret.
    #[arg(long, value_name = "FILE", conflicts_with = "name")]
    secret: Option<PathBuf>,
}

/// Who to believe: `receive`, and the upstream side of `relay`.
#[derive(Args, Debug)]
struct TrustArgs {
    /// Accept only a session signed by this key: a NAME.pub file from `blockcast keygen`, or
    /// its 64 hex digits. Repeat to trust several (the origin's and its relays' keys). Forged
    /// announces and Dones are ignored and counted.
    #[arg(long, value_name = "KEY.pub")]
    trust: Vec<String>,
    /// Accept only this content, without keys: the manifest hash the server prints (or, for a
    /// one-object session, the object's BLAKE3, as `blockcast hash` and b3sum print it).
    #[arg(long, value_name = "HASH")]
    expect: Option<String>,
}

impl TrustArgs {
    fn keys(&self) -> Result<Vec<[u8; 32]>> {
        let keys = self
            .trust
            .iter()
            .map(|k| blockcast_node::keys::read_public(k).map_err(exit::node))
            .collect::<Result<Vec<_>>>()?;
        blockcast_proto::auth::TrustedKeys::new(&keys)
            .map_err(|e| exit::usage(format!("--trust: {e}")))?;
        Ok(keys)
    }

    fn expect(&self) -> Result<Option<[u8; 32]>> {
        self.expect
            .as_deref()
            .map(|h| {
                blockcast_proto::auth::from_hex::<32>(h).ok_or_else(|| {
                    exit::usage(format!(
                        "--expect {h:?} is not a BLAKE3 hash (64 hex digits)"
                    ))
                })
            })
            .transpose()
    }
}

/// Reads `--secret FILE` (or `--upstream-secret`).
fn group_secret(path: Option<&PathBuf>) -> Result<Option<blockcast_node::Secret>> {
    path.map(|p| blockcast_node::keys::read_group_secret(p).map_err(exit::node))
        .transpose()
}

/// Reads `--sign KEY`.
fn signer(path: Option<&PathBuf>) -> Result<Option<blockcast_proto::auth::Signer>> {
    path.map(|p| blockcast_node::keys::read_secret(p).map_err(exit::node))
        .transpose()
}

#[derive(Args, Debug)]
struct HashArgs {
    /// Files or directories, as `serve` takes them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The geometry `serve` will use (the cache keeps hashes per block size).
    #[arg(long, default_value_t = 1400)]
    unit_size: u16,
    #[arg(long, default_value_t = 749)]
    units_per_block: u16,
    /// The cache directory (default: $XDG_CACHE_HOME/blockcast/hashes or
    /// ~/.cache/blockcast/hashes).
    #[arg(long, value_name = "DIR")]
    hash_cache: Option<PathBuf>,
}

/// `--datapath`: how a session's data moves.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum DatapathArg {
    /// AF_XDP where native XDP works on the interface, sockets otherwise (says which).
    Auto,
    /// The kernel's UDP sockets.
    #[default]
    Socket,
    /// AF_XDP (kernel bypass; root or CAP_NET_ADMIN + CAP_BPF, native XDP on the
    /// interface); exits with the reason where it cannot work.
    Xdp,
}

impl DatapathArg {
    fn node(self) -> blockcast_node::Datapath {
        match self {
            DatapathArg::Auto => blockcast_node::Datapath::Auto,
            DatapathArg::Socket => blockcast_node::Datapath::Socket,
            DatapathArg::Xdp => blockcast_node::Datapath::Xdp,
        }
    }
}

#[derive(Args, Debug, Clone)]
struct NetArgs {
    /// Multicast group and port, e.g. 239.255.0.1:9000 (not with split mode).
    #[arg(long)]
    group: Option<String>,
    /// Interface to use, by name (lo, eth1) or IPv4 address. Always explicit.
    #[arg(long)]
    iface: String,
}

/// How a server session sends: `serve`, and each downstream group of a `relay`.
#[derive(Args, Debug)]
struct SendArgs {
    /// Send rate in bytes per second (suffixes k, M, G), or "auto" to follow the receivers.
    #[arg(long, default_value = "auto")]
    rate: String,
    /// Wait for this many receivers before sending (a standby relay: 1 and a long --max-wait,
    /// so it sends only once receivers fail over to it).
    #[arg(long, default_value_t = 1)]
    min_receivers: usize,
    /// ...but no longer than this many seconds.
    #[arg(long, default_value_t = 10.0)]
    max_wait: f64,
    /// Stop after this many seconds whatever the receivers hold.
    #[arg(long)]
    deadline: Option<f64>,
    /// Control port (0: any; a relay's downstream groups take this one and the next ones).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Multicast TTL (1 keeps packets on the local link).
    #[arg(long, default_value_t = 1)]
    ttl: u32,
    /// Data threads per session, one stripe of blocks each, pinned one per core (default: one
    /// per two cores for serve, leaving the rest to the control thread, the kernel's network
    /// work and whatever else the host runs; one per downstream group for relay).
    #[arg(long)]
    threads: Option<usize>,
    /// Repair with the original units receivers ask for while that costs at most this many
    /// times the bandwidth of parity (about N for N receivers that lose alike), else with
    /// parity units, which serve many receivers at once but cost each a decode of its block.
    /// 0: parity always (for a link slower than the receivers' CPUs).
    #[arg(long, default_value_t = blockcast_proto::ORIGINALS_FACTOR)]
    originals_factor: u32,
    /// Resend originals one by one instead of combining the units different receivers miss
    /// into XOR repairs (one datagram for up to four receivers; docs/wire.md §3.2).
    #[arg(long)]
    no_xor_repairs: bool,
    /// Sign the session with this key (NAME.key from `blockcast keygen`): receivers given
    /// NAME.pub with --trust accept nothing else. A relay signs its own announces with it and
    /// passes the origin's signed statement on unchanged.
    #[arg(long, value_name = "KEY.key")]
    sign: Option<PathBuf>,
    /// A closed group: seal every packet with this group secret (`blockcast keygen --secret
    /// FILE`; encrypted and authenticated) and take only packets sealed with it. Receivers
    /// need the same file. A relay uses it on both sides unless --upstream-secret is given.
    #[arg(long, value_name = "FILE")]
    secret: Option<PathBuf>,
}

impl SendArgs {
    fn max_wait(&self) -> Duration {
        Duration::from_secs_f64(self.max_wait.max(0.0))
    }

    fn deadline(&self) -> Option<Duration> {
        self.deadline.map(|d| Duration::from_secs_f64(d.max(0.0)))
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Files or directories to send.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    send: SendArgs,
    /// Bytes of payload per datagram (even; 1400 fits a 1500-byte MTU, 8946 a 9000-byte one;
    /// a unit that does not fit the interface's MTU is refused).
    #[arg(long, default_value_t = 1400)]
    unit_size: u16,
    /// Units per block (a block is verified as a whole).
    #[arg(long, default_value_t = 749)]
    units_per_block: u16,
    /// Without multicast: send each unit by unicast to one receiver, which copies it to the
    /// others of its zone and on to the next zone (receivers use --server and --zone). Prints
    /// the control address receivers need.
    #[arg(long, conflicts_with = "group")]
    split: bool,
    /// Where to keep each input's hashes between runs, so that serving the same file again
    /// starts at once instead of after reading and hashing it (default:
    /// $XDG_CACHE_HOME/blockcast/hashes or ~/.cache/blockcast/hashes). An entry is used only
    /// while the file's inode, size and change times are those it was hashed with.
    #[arg(long, value_name = "DIR")]
    hash_cache: Option<PathBuf>,
    /// Hash the inputs every time; read and write no cache.
    #[arg(long, conflicts_with = "hash_cache")]
    no_hash_cache: bool,
    /// Drop a receiver not heard from for this many seconds (in split mode the copy plan is
    /// rebuilt without it).
    #[arg(long, default_value_t = 10.0)]
    receiver_timeout: f64,
    /// How the data threads send the first pass: io_uring on the kernel's sockets, AF_XDP
    /// frames (one data thread per tx queue of the interface; repairs and control stay on
    /// sockets), or auto (XDP where the interface takes native XDP; the summary says which).
    #[arg(long, value_enum, default_value_t = DatapathArg::Socket)]
    datapath: DatapathArg,
}

#[derive(Args, Debug)]
struct ReceiveArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Where to store: a directory, or a file name for a single object.
    #[arg(long)]
    out: PathBuf,
    /// Give up if no server is heard for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Receive buffer to ask the kernel for, bytes (per socket).
    #[arg(long, default_value_t = 32 << 20)]
    rcvbuf: usize,
    /// Receive threads for a server with several data threads: its stripe s arrives on the
    /// group's port + s, and up to this many threads read those sockets (default: one per two
    /// cores; each block is also hashed on a thread of its own).
    #[arg(long)]
    threads: Option<usize>,
    /// Memory for block buffers, MiB: a block is assembled in one, hashed there and written
    /// to the file past the page cache (O_DIRECT); a block that finds none free is written
    /// through the page cache. 0: every block through the page cache.
    #[arg(long, value_name = "MIB", default_value_t = blockcast_node::DEFAULT_BLOCK_BUFFER_BYTES >> 20)]
    block_buffers: usize,
    /// Play while receiving: write the verified bytes, in order, to standard output ("-").
    #[arg(long, value_name = "-")]
    play: Option<String>,
    /// Play while receiving into a command's standard input, e.g. "ffplay -" or "mpv -".
    #[arg(long, value_name = "COMMAND", conflicts_with = "play")]
    play_cmd: Option<String>,
    /// Start playing at a block address (BLOCK or BLOCK:UNIT); it is fetched first.
    #[arg(long, value_name = "BLOCK[:UNIT]", conflicts_with = "start_byte")]
    start_at: Option<String>,
    /// Start playing at a byte offset (k, M, G suffixes); it is fetched first.
    #[arg(long, value_name = "OFFSET")]
    start_byte: Option<String>,
    /// Serve the objects over HTTP (GET, HEAD, Range) on this address while they arrive, e.g.
    /// 127.0.0.1:8080; after the transfer it keeps serving until Ctrl-C.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<String>,
    /// Without multicast (split mode): the server's control address, as `serve --split`
    /// prints it.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "group")]
    server: Option<String>,
    /// Split mode: the zone this receiver is in (receivers of a zone copy to each other, so
    /// give receivers that are near each other the same zone).
    #[arg(long, default_value_t = 0, requires = "server")]
    zone: u16,
    #[command(flatten)]
    resume: ResumeArgs,
    #[command(flatten)]
    failover: FailoverArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// A closed group: take only packets sealed with this group secret (the file the server
    /// was given with --secret) and seal every packet sent.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    secret: Option<PathBuf>,
    /// How the group's data arrives: the kernel's sockets, AF_XDP (an XDP program takes the
    /// session's datagrams on the interface; control traffic and group membership stay on
    /// sockets), or auto (XDP where it works; the summary's "datapath" says which).
    #[arg(long, value_enum, default_value_t = DatapathArg::Socket)]
    datapath: DatapathArg,
}

/// What a receive does with what an earlier one into the same place left.
#[derive(Args, Debug)]
struct ResumeArgs {
    /// Hash the blocks an earlier receive into the same --out recorded as verified, instead
    /// of trusting its state file (files changed since, a disk that may have lied).
    #[arg(long)]
    verify_existing: bool,
    /// Do not reserve the files' space before writing: sparse files (thin storage), and a
    /// disk that fills up stops the transfer midway (exit 4, state kept) instead of at the
    /// start.
    #[arg(long)]
    no_preallocate: bool,
    /// Write over files found where objects go that are not partial files of an earlier
    /// receive into this --out (without it such a file is kept and the receive exits 8). A
    /// regular file is rewritten in place (its blocks that already match are kept); a
    /// symbolic link or a file with other hard links is removed and made anew, never followed.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args, Debug)]
struct FailoverArgs {
    /// Another group that carries the same content (a standby relay, the server's group); when
    /// the current source is silent for --failover-after seconds the receiver switches to the
    /// next one, keeping every block it has. Repeat for more.
    #[arg(long, value_name = "GROUP:PORT")]
    fallback: Vec<String>,
    /// Seconds of silence before failing over to the next --fallback group.
    #[arg(long, default_value_t = 3.0)]
    failover_after: f64,
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// The upstream group and port to receive from.
    #[arg(long, value_name = "GROUP:PORT")]
    upstream: String,
    /// Interface for the upstream group (name or IPv4 address).
    #[arg(long)]
    iface: String,
    /// A downstream group and port to serve (repeat for several groups).
    #[arg(long, value_name = "GROUP:PORT", required = true)]
    downstream: Vec<String>,
    /// Interface for the downstream groups (default: --iface). Give one, or one per
    /// --downstream in the same order.
    #[arg(long)]
    downstream_iface: Vec<String>,
    /// Where the relay keeps what it forwards: a directory, or a file name for one object.
    /// Kept afterwards (it is a verified copy).
    #[arg(long)]
    cache: PathBuf,
    /// The downstream sessions (one per group) send as `serve` does.
    #[command(flatten)]
    send: SendArgs,
    /// Give up if no upstream server is heard for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// The cache resumes as a receive's --out does.
    #[command(flatten)]
    resume: ResumeArgs,
    #[command(flatten)]
    failover: FailoverArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// A TOML file whose keys are this command's long flag names (e.g. `iface = "eth1"`,
    /// `downstream = ["239.255.1.1:9000"]`); flags and BLOCKCAST_CONFIG override it.
    #[arg(long, env = "BLOCKCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The upstream group's secret, when it is not --secret's (or the upstream group is
    /// closed and the downstream ones open: then the relay serves the content in the clear).
    #[arg(long, value_name = "FILE")]
    upstream_secret: Option<PathBuf>,
    /// How the upstream group's data arrives: sockets, AF_XDP, or auto (see `receive
    /// --datapath`).
    #[arg(long, value_enum, default_value_t = DatapathArg::Socket)]
    datapath: DatapathArg,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Bytes to send (k, M, G suffixes).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Receivers (threads of this process).
    #[arg(long, default_value_t = 1)]
    receivers: usize,
    /// Payload bytes per datagram (even, at most 8972).
    #[arg(long, default_value_t = 1400)]
    unit_size: u16,
    /// Send rate ("auto" or bytes per second with k, M, G).
    #[arg(long, default_value = "auto")]
    rate: String,
    /// Server data threads (stripes).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Receive threads per receiver (they read the stripes of a server with several data
    /// threads, each on its own port).
    #[arg(long, default_value_t = 1)]
    recv_threads: usize,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the generated sample (suffixes k, M, G).
    #[arg(long, default_value = "256M")]
    size: String,
    /// Receivers to start.
    #[arg(long, default_value_t = 3)]
    receivers: usize,
    /// Send rate ("auto" or bytes per second with k, M, G).
    #[arg(long, default_value = "auto")]
    rate: String,
    /// Server data threads (the receivers share this machine's cores with them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = daemon::parse_cli();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    exit::on_interrupt(stop.clone());
    let out = output::Output::new(cli.json, cli.quiet);
    let result = match cli.command {
        Command::Serve(a) => serve(a, &stop, &out),
        Command::Receive(a) => receive(a, &stop, &out),
        Command::Relay(a) => relay(a, &stop, &out),
        Command::Demo(a) => demo::demo(a, &stop, &out),
        Command::Bench(a) => demo::bench(a, &stop, &out),
        Command::Hash(a) => hash(a, &out),
        Command::Keygen(a) => keygen(a, &out),
        Command::Origin(a) => daemon::origin(a, &stop, &out),
        Command::Edge(a) => daemon::edge(a, &stop, &out),
        Command::Fetch(a) => daemon::fetch(a, &stop, &out),
        Command::Agent(a) => daemon::agent(a, &stop, &out),
        Command::Completions(a) => daemon::completions(a.shell),
        Command::Man(a) => daemon::man(a.dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockcast: {e:#}");
            ExitCode::from(exit::code_for(&e))
        }
    }
}

/// A size (README, "Sizes and rates").
pub fn parse_size(s: &str) -> Result<u64> {
    units::parse_size(s).map_err(exit::usage)
}

/// A rate in bytes per second, or `None` for auto (README, "Sizes and rates").
pub fn parse_rate(s: &str) -> Result<Option<u64>> {
    units::parse_rate(s).map_err(|e| exit::usage(format!("--rate {e}")))
}

/// Parses the group and resolves the interface, with one clear error for each mistake. In
/// split mode (`split`) there is no group: an unused placeholder stands in.
fn resolve_net(net: &NetArgs, split: bool) -> Result<(SocketAddrV4, Ipv4Addr)> {
    let iface = resolve_iface(&net.iface)?;
    if split {
        return Ok((SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), iface));
    }
    let Some(group_arg) = net.group.as_deref() else {
        return Err(exit::usage(
            "--group is required (or, without multicast, serve --split / receive --server)".into(),
        ));
    };
    Ok((parse_group("--group", group_arg)?, iface))
}

/// A multicast ADDRESS:PORT given to `flag`.
pub(crate) fn parse_group(flag: &str, s: &str) -> Result<SocketAddrV4> {
    let group: SocketAddrV4 = s.parse().map_err(|_| {
        exit::usage(format!(
            "{flag} {s:?} is not ADDRESS:PORT (e.g. 239.255.0.1:9000)"
        ))
    })?;
    if !group.ip().is_multicast() {
        return Err(exit::usage(format!(
            "{flag} {} is not a multicast address (224.0.0.0/4; use 239.255.x.y on a LAN)",
            group.ip()
        )));
    }
    if group.port() == 0 {
        return Err(exit::usage(format!("{flag} needs a port other than 0")));
    }
    Ok(group)
}

fn resolve_iface(s: &str) -> Result<Ipv4Addr> {
    blockcast_io::iface::resolve_ipv4(s).map_err(|e| exit::net(e.to_string()))
}

fn parse_failover(f: &FailoverArgs) -> Result<(Vec<SocketAddrV4>, Duration)> {
    let groups = f
        .fallback
        .iter()
        .map(|g| parse_group("--fallback", g))
        .collect::<Result<_>>()?;
    if f.failover_after.is_nan() || f.failover_after <= 0.0 {
        return Err(exit::usage("--failover-after must be positive".into()));
    }
    Ok((groups, Duration::from_secs_f64(f.failover_after)))
}

fn relay(a: RelayArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let upstream = parse_group("--upstream", &a.upstream)?;
    let iface = resolve_iface(&a.iface)?;
    let groups = a
        .downstream
        .iter()
        .map(|g| parse_group("--downstream", g))
        .collect::<Result<Vec<_>>>()?;
    let ifaces = match a.downstream_iface.len() {
        0 => vec![iface; groups.len()],
        1 => vec![resolve_iface(&a.downstream_iface[0])?; groups.len()],
        n if n == groups.len() => a
            .downstream_iface
            .iter()
            .map(|i| resolve_iface(i))
            .collect::<Result<_>>()?,
        n => {
            return Err(exit::usage(format!(
                "--downstream-iface given {n} times for {} --downstream groups: give one, or one per group",
                groups.len()
            )))
        }
    };
    if groups.contains(&upstream) {
        return Err(exit::usage(format!(
            "--downstream {upstream} is the upstream group: a relay would feed itself"
        )));
    }
    let (fallback, failover_after) = parse_failover(&a.failover)?;
    let cfg = RelayConfig {
        upstream: ReceiveConfig {
            group: upstream,
            iface,
            out: a.cache,
            timeout: Duration::from_secs_f64(a.timeout.max(0.1)),
            rcvbuf: 32 << 20,
            id: receiver_id()?,
            play: None,
            start_at: None,
            http: None,
            fallback,
            failover_after,
            split: None,
            threads: (cores() / 2).max(1),
            trust: a.trust.keys()?,
            expect: a.trust.expect()?,
            secret: group_secret(a.upstream_secret.as_ref().or(a.send.secret.as_ref()))?,
            preallocate: !a.resume.no_preallocate,
            verify_existing: a.resume.verify_existing,
            overwrite: a.resume.overwrite,
            // Each block is sent on from the cache files as soon as it is verified: through
            // the page cache it is read back from memory, not from the disk.
            block_buffers: 0,
            datapath: a.datapath.node(),
        },
        downstream: groups
            .iter()
            .zip(&ifaces)
            .enumerate()
            .map(|(i, (&group, &iface))| Downstream {
                group,
                iface,
                control_port: if a.send.control_port == 0 {
                    0
                } else {
                    a.send.control_port.saturating_add(i as u16)
                },
            })
            .collect(),
        ttl: a.send.ttl,
        rate: parse_rate(&a.send.rate)?,
        min_receivers: a.send.min_receivers,
        max_wait: a.send.max_wait(),
        deadline: a.send.deadline(),
        threads: a.send.threads.unwrap_or(1).max(1),
        originals_factor: a.send.originals_factor,
        xor_repairs: !a.send.no_xor_repairs,
        signer: signer(a.send.sign.as_ref())?,
        secret: group_secret(a.send.secret.as_ref())?,
    };
    if cfg.upstream.secret.is_some() && cfg.secret.is_none() && !out.quiet {
        // stderr, so it shows with --json too.
        eprintln!(
            "blockcast: warning: the upstream group is closed and the downstream groups are not: the relay serves its content in the clear"
        );
    }
    let summary = output::run_relay(&cfg, stop, out).map_err(exit::node)?;
    out.relay_summary(&summary);
    let short: usize = summary
        .downstream
        .iter()
        .filter(|s| s.reason == blockcast_proto::wire::DoneReason::Deadline)
        .map(|s| s.receivers.iter().filter(|r| !r.complete).count())
        .sum();
    if short > 0 {
        return Err(exit::incomplete(format!(
            "the deadline passed with {short} downstream receiver(s) incomplete"
        )));
    }
    Ok(())
}

fn hash(a: HashArgs, out: &output::Output) -> Result<()> {
    let inputs = collect_inputs(&a.paths).map_err(exit::node)?;
    let Some(dir) = a.hash_cache.or_else(blockcast_node::HashCache::default_dir) else {
        return Err(exit::usage(
            "no cache directory: give --hash-cache DIR (neither XDG_CACHE_HOME nor HOME is set)"
                .into(),
        ));
    };
    let cache = blockcast_node::HashCache::new(dir);
    let block_size = usize::from(a.unit_size) * usize::from(a.units_per_block);
    let started = std::time::Instant::now();
    let (entries, cached) =
        blockcast_node::hash_inputs(&inputs, block_size, Some(&cache)).map_err(exit::node)?;
    let seconds = started.elapsed().as_secs_f64();
    if out.json {
        json::print(&json::HashJson {
            role: "hash",
            objects: entries
                .iter()
                .map(|e| json::HashedObjectJson {
                    name: &e.name,
                    bytes: e.size,
                    blocks: e.block_hashes.len(),
                    blake3: blake3::Hash::from(e.hash).to_hex().to_string(),
                })
                .collect(),
            from_cache: cached,
            seconds,
            cache: cache.dir().display().to_string(),
        });
    } else {
        for e in &entries {
            let name = blockcast_node::names::escaped(&e.name);
            println!("{}  {name}", blake3::Hash::from(e.hash).to_hex());
        }
        out.say(&format!(
            "{} object(s) in {seconds:.2} s, {cached} from the cache ({})",
            entries.len(),
            cache.dir().display()
        ));
    }
    Ok(())
}

fn serve(a: ServeArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let (group, iface) = resolve_net(&a.net, a.split)?;
    let inputs = collect_inputs(&a.paths).map_err(exit::node)?;
    let secret = group_secret(a.send.secret.as_ref())?;
    if secret.is_some() && a.split {
        return Err(exit::usage(
            "--secret needs multicast: split mode does not seal the copies receivers forward"
                .into(),
        ));
    }
    // A sealed unit carries the trailer too.
    let trailer = if secret.is_some() {
        blockcast_node::TRAILER_LEN
    } else {
        0
    };
    let geometry = geometry(a.unit_size, a.units_per_block, iface, trailer)?;
    let cfg = ServeConfig {
        inputs,
        group,
        iface,
        control_port: a.send.control_port,
        ttl: a.send.ttl,
        rate: parse_rate(&a.send.rate)?,
        geometry,
        min_receivers: a.send.min_receivers,
        max_wait: a.send.max_wait(),
        deadline: a.send.deadline(),
        session: session_id(),
        threads: a.send.threads.unwrap_or_else(|| cores() / 2).max(1),
        split: a.split,
        receiver_timeout: Duration::from_secs_f64(a.receiver_timeout.max(0.1)),
        originals_factor: a.send.originals_factor,
        xor_repairs: !a.send.no_xor_repairs,
        signer: signer(a.send.sign.as_ref())?,
        statement: None,
        core_offset: 0,
        gate: None,
        secret,
        hash_cache: if a.no_hash_cache {
            None
        } else {
            a.hash_cache
                .or_else(blockcast_node::HashCache::default_dir)
                .map(blockcast_node::HashCache::new)
        },
        datapath: a.datapath.node(),
    };
    let (a_max_wait, a_min_receivers) = (a.send.max_wait, a.send.min_receivers);
    let summary = output::run_serve(&cfg, stop, out).map_err(exit::node)?;
    out.serve_summary(&summary);
    match summary.reason {
        blockcast_proto::wire::DoneReason::Complete if summary.receivers_ever == 0 => {
            return Err(exit::incomplete(format!(
                "no receiver joined (waited {} s for {}); the content was sent once to the group",
                a_max_wait, a_min_receivers
            )));
        }
        blockcast_proto::wire::DoneReason::Complete => {}
        blockcast_proto::wire::DoneReason::Aborted => {
            return Err(exit::node(blockcast_node::NodeError::Interrupted))
        }
        blockcast_proto::wire::DoneReason::Deadline => {
            let missing = summary.receivers.iter().filter(|r| !r.complete).count();
            return Err(exit::incomplete(format!(
                "the deadline passed with {missing} receiver(s) incomplete"
            )));
        }
    }
    Ok(())
}

fn receive(a: ReceiveArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let split = match a.server.as_deref() {
        Some(s) => {
            let server: SocketAddr = s.parse().map_err(|_| {
                exit::usage(format!(
                    "--server {s:?} is not ADDRESS:PORT (what serve --split prints)"
                ))
            })?;
            if server.port() == 0 || server.ip().is_unspecified() || server.ip().is_multicast() {
                return Err(exit::usage(format!(
                    "--server {server} is not a unicast address with a port"
                )));
            }
            Some(blockcast_proto::SplitMember {
                server,
                zone: a.zone,
            })
        }
        None => None,
    };
    let (group, iface) = resolve_net(&a.net, split.is_some())?;
    let (fallback, failover_after) = parse_failover(&a.failover)?;
    let cfg = ReceiveConfig {
        split,
        threads: a.threads.unwrap_or_else(|| cores() / 2).max(1),
        group,
        iface,
        out: a.out,
        timeout: Duration::from_secs_f64(a.timeout.max(0.1)),
        rcvbuf: a.rcvbuf,
        id: receiver_id()?,
        trust: a.trust.keys()?,
        expect: a.trust.expect()?,
        secret: group_secret(a.secret.as_ref())?,
        play: match (&a.play, &a.play_cmd) {
            (Some(p), _) if p == "-" => Some(PlayTo::Stdout),
            (Some(p), _) => {
                return Err(exit::usage(format!(
                    "--play takes \"-\" (standard output), not {p:?}; use --play-cmd for a player"
                )))
            }
            (None, Some(cmd)) => Some(PlayTo::Command(cmd.clone())),
            (None, None) => None,
        },
        start_at: match (&a.start_at, &a.start_byte) {
            (Some(s), _) => Some(parse_start_at(s)?),
            (None, Some(b)) => Some(StartAt::Byte(parse_size(b)?)),
            (None, None) => None,
        },
        http: a
            .http
            .as_deref()
            .map(|h| {
                h.parse::<SocketAddr>().map_err(|_| {
                    exit::usage(format!(
                        "--http {h:?} is not ADDRESS:PORT (e.g. 127.0.0.1:8080)"
                    ))
                })
            })
            .transpose()?,
        fallback,
        failover_after,
        preallocate: !a.resume.no_preallocate,
        verify_existing: a.resume.verify_existing,
        overwrite: a.resume.overwrite,
        block_buffers: a.block_buffers.saturating_mul(1 << 20),
        datapath: a.datapath.node(),
    };
    if cfg.play == Some(PlayTo::Stdout) && out.json {
        return Err(exit::usage(
            "--json and --play - both write to standard output; pick one".into(),
        ));
    }
    if (a.start_at.is_some() || a.start_byte.is_some()) && cfg.play.is_none() {
        return Err(exit::usage(
            "--start-at and --start-byte need --play or --play-cmd".into(),
        ));
    }
    let summary = output::run_receive(&cfg, stop, out).map_err(exit::node)?;
    out.receive_summary(&summary);
    Ok(())
}

fn keygen(a: KeygenArgs, out: &output::Output) -> Result<()> {
    let name = match (a.name, a.secret) {
        (_, Some(path)) => {
            blockcast_node::keys::generate_group_secret(&path).map_err(exit::node)?;
            if out.json {
                json::print(&json::KeygenJson {
                    role: "keygen",
                    secret: path.display().to_string(),
                    public: None,
                    key: None,
                });
            } else {
                out.say(&format!(
                    "wrote {} (a closed group's secret: give the same file to serve, receive and relay with --secret)",
                    path.display()
                ));
            }
            return Ok(());
        }
        (Some(name), None) => name,
        (None, None) => return Err(exit::usage("keygen needs NAME or --secret FILE".into())),
    };
    let pair = blockcast_node::keys::generate(&name).map_err(exit::node)?;
    let key = blockcast_proto::auth::hex(&pair.key);
    if out.json {
        json::print(&json::KeygenJson {
            role: "keygen",
            secret: pair.secret.display().to_string(),
            public: Some(pair.public.display().to_string()),
            key: Some(key),
        });
    } else {
        println!("{key}");
        out.say(&format!(
            "wrote {} (secret: serve --sign) and {} (public: receive --trust)",
            pair.secret.display(),
            pair.public.display()
        ));
    }
    Ok(())
}

/// A receiver's id: 64 random bits (it names the receiver to the server; nobody off the path
/// should be able to guess it).
fn receiver_id() -> Result<u64> {
    Ok(u64::from_le_bytes(
        blockcast_node::keys::random_bytes().map_err(exit::node)?,
    ))
}

/// The geometry of `--unit-size` and `--units-per-block`, checked: a unit (with `trailer`
/// bytes of a sealed packet after it) whose datagram does not fit the interface's MTU is sent
/// as IP fragments: slow, and under loss the kernel's reassembly queue can stall a receiver
/// for seconds.
fn geometry(
    unit_size: u16,
    units_per_block: u16,
    iface: Ipv4Addr,
    trailer: usize,
) -> Result<Geometry> {
    if unit_size < 2 || unit_size % 2 != 0 || unit_size > 65_480 {
        return Err(exit::usage("--unit-size must be even, 2..=65480".into()));
    }
    if let Some(mtu) = iface_mtu(iface) {
        let largest =
            mtu.saturating_sub(20 + 8 + blockcast_proto::wire::UNIT_HEADER_LEN + trailer) & !1;
        if usize::from(unit_size) > largest {
            return Err(exit::usage(format!(
                "--unit-size {unit_size} does not fit the interface's MTU of {mtu} bytes: use at most {largest}"
            )));
        }
    }
    Ok(Geometry {
        unit_size,
        units_per_block,
        max_parity: units_per_block.min(128),
    })
}

/// The MTU of the interface that has address `addr` (from /sys), if it can be read.
fn iface_mtu(addr: Ipv4Addr) -> Option<usize> {
    let name = blockcast_io::iface::list()
        .ok()?
        .into_iter()
        .find(|i| i.ipv4.contains(&addr))?
        .name;
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Parses BLOCK or BLOCK:UNIT.
fn parse_start_at(s: &str) -> Result<StartAt> {
    let bad = || exit::usage(format!("--start-at {s:?} is not BLOCK or BLOCK:UNIT"));
    let (b, u) = s.split_once(':').unwrap_or((s, "0"));
    Ok(StartAt::Unit {
        block: b.trim().parse().map_err(|_| bad())?,
        unit: u.trim().parse().map_err(|_| bad())?,
    })
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A random-enough id from the clock and the process id (not secret).
pub fn session_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let h = blake3::hash(
        &[
            &t.as_nanos().to_le_bytes()[..],
            &std::process::id().to_le_bytes(),
        ]
        .concat(),
    );
    u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap_or([1, 0, 0, 0])) | 1
}
