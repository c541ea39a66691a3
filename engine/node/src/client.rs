//! An origin's client as a library: ask for objects by name (to fetch them, or only to learn
//! their size and hash) and for the catalog, over the origin's control protocol
//! (docs/wire.md §17). `fetch`, the agent, the origin's own HTTP API and the edge use it.
//!
//! Each call runs the protocol's [`Requester`] on the node's one driver until every answer is
//! in (or given up), on a socket bound to the interface's address.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use blockcast_io::RecvBatch;
use blockcast_proto::auth::TrustedKeys;
use blockcast_proto::requester::{Requester, RequesterConfig, RequesterEvent};
use blockcast_proto::wire::origin::{AnswerStatus, Catalog, RequestMode};

use crate::driver::{self, Flow, Input, Io, Out, Sends};
use crate::NodeError;

pub use blockcast_proto::wire::origin::Grant;

/// A checked catalog and the trusted key that signed it.
pub type SignedCatalog = (Catalog, Option<[u8; 32]>);

/// Where the origin is and how to ask it.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The origin's listen address.
    pub origin: SocketAddr,
    /// This host's interface address (requests leave from it).
    pub iface: Ipv4Addr,
    /// Give a request up after this long without a final answer.
    pub timeout: Duration,
    /// Keys the catalog must be signed by (empty: not checked).
    pub trust: Vec<[u8; 32]>,
}

/// The final answer for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Join this session (a fetch).
    Granted(Grant),
    /// The object's size and hash (a lookup).
    Found { size: u64, hash: [u8; 32] },
    /// Not in the origin's catalog.
    NotFound,
    /// No final answer in time (the origin is unreachable, busy, or still hashing it).
    TimedOut { waited: bool },
}

impl Answer {
    fn from_status(s: AnswerStatus) -> Self {
        match s {
            AnswerStatus::Granted(g) => Answer::Granted(g),
            AnswerStatus::Found { size, hash } => Answer::Found { size, hash },
            AnswerStatus::NotFound => Answer::NotFound,
            AnswerStatus::NotReady { .. } | AnswerStatus::Busy { .. } => {
                Answer::TimedOut { waited: true }
            }
        }
    }
}

/// Asks the origin for each of `names` (`lookup`: only describe them); returns the answers
/// in the order of `names`.
pub fn request(
    cfg: &ClientConfig,
    names: &[String],
    lookup: bool,
) -> Result<Vec<Answer>, NodeError> {
    let mode = if lookup {
        RequestMode::Lookup
    } else {
        RequestMode::Fetch
    };
    let mut rq = Requester::new(requester_config(cfg)?);
    let now = Instant::now();
    let ids: Vec<u64> = names.iter().map(|n| rq.request(now, n, mode)).collect();
    let mut host = ClientHost::default();
    run(cfg, &mut rq, &mut host)?;
    Ok(ids
        .iter()
        .map(|id| {
            host.answers.iter().find(|(i, _)| i == id).map_or(
                Answer::TimedOut {
                    waited: host.waited.contains(id),
                },
                |(_, a)| a.clone(),
            )
        })
        .collect())
}

/// The origin's catalog, whole and checked (with trusted keys: signed by one of them, whose
/// key is returned).
pub fn catalog(cfg: &ClientConfig) -> Result<SignedCatalog, NodeError> {
    let mut rq = Requester::new(requester_config(cfg)?);
    rq.fetch_catalog(Instant::now());
    let mut host = ClientHost::default();
    run(cfg, &mut rq, &mut host)?;
    match host.catalog {
        Some(Ok(c)) => Ok(c),
        Some(Err(why)) => Err(NodeError::Config(format!(
            "the catalog of {}: {why}",
            cfg.origin
        ))),
        None => Err(NodeError::Incomplete {
            blocks_done: 0,
            blocks: 0,
            why: "the origin did not send its catalog",
        }),
    }
}

fn requester_config(cfg: &ClientConfig) -> Result<RequesterConfig, NodeError> {
    let seed = u64::from_le_bytes(crate::keys::random_bytes()?);
    let mut r = RequesterConfig::new(cfg.origin, seed);
    r.timeout = cfg.timeout;
    r.trust =
        TrustedKeys::new(&cfg.trust).map_err(|e| NodeError::Config(format!("--trust: {e}")))?;
    Ok(r)
}

fn run(cfg: &ClientConfig, rq: &mut Requester, host: &mut ClientHost) -> Result<(), NodeError> {
    let socket = blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, 0)), true)?;
    let input = socket
        .try_clone()
        .map_err(|e| NodeError::Io(blockcast_io::IoError::os("client socket", "dup", e)))?;
    let mut io = Io::new(
        vec![Input::new(input, RecvBatch::new(8, 2048)?)],
        Out {
            ring: None,
            group: None,
            control: Some(socket),
            seal: None,
            xdp: None,
            group_ring: false,
        },
    );
    driver::run(rq, &mut io, host)
}

impl Sends for Requester {}

/// Collects the answers; stops when nothing is asked any more.
#[derive(Default)]
struct ClientHost {
    answers: Vec<(u64, Answer)>,
    waited: Vec<u64>,
    catalog: Option<Result<SignedCatalog, &'static str>>,
}

impl driver::Host<Requester> for ClientHost {
    fn on_event(
        &mut self,
        _rq: &mut Requester,
        _now: Instant,
        event: RequesterEvent,
    ) -> Result<Flow, NodeError> {
        match event {
            RequesterEvent::Answer {
                request_id, status, ..
            } => self.answers.push((request_id, Answer::from_status(status))),
            RequesterEvent::Waiting { request_id, .. } => self.waited.push(request_id),
            RequesterEvent::TimedOut { .. } => {}
            RequesterEvent::Catalog { catalog, signer } => {
                self.catalog = Some(Ok((catalog, signer)))
            }
            RequesterEvent::CatalogFailed { why } => self.catalog = Some(Err(why)),
        }
        Ok(Flow::Continue)
    }

    fn end(&mut self, rq: &mut Requester, _now: Instant) -> Result<Flow, NodeError> {
        Ok(if rq.is_idle() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}
