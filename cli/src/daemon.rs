//! The long-running commands' operations surface: config files (flags > environment > file),
//! the NDJSON event log, systemd readiness; and the `origin`, `fetch`, `agent` and `edge`
//! commands.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use blockcast_node::events::{EventSink, NodeEvent};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use serde::Serialize;

use crate::{exit, json, output, units, Cli};

/// Parses the command line; for a command given `--config FILE` (or `BLOCKCAST_CONFIG`), a
/// value the file sets is used for every flag neither the command line nor the environment
/// set (README, "Configuration"). The file's keys are the command's long flag names.
pub fn parse_cli() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match with_config(argv) {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<clap::Error>() {
                c.exit();
            }
            eprintln!("blockcast: {e:#}");
            std::process::exit(i32::from(exit::USAGE));
        }
    }
}

/// [`parse_cli`] for an explicit command line (tests).
pub fn with_config(mut argv: Vec<OsString>) -> Result<Cli> {
    let cmd = Cli::command();
    // Tolerant: a required flag may come from the file.
    let matches = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)?;
    let Some((sub, sub_matches)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let has_config = cmd
        .find_subcommand(sub)
        .is_some_and(|c| c.get_arguments().any(|a| a.get_id() == "config"));
    let path = if has_config {
        sub_matches.get_one::<PathBuf>("config").cloned()
    } else {
        None
    };
    let Some(path) = path else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| exit::usage(format!("--config {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| exit::usage(format!("--config {}: {e}", path.display())))?;
    let sub_cmd = cmd.find_subcommand(sub).expect("the subcommand parsed");
    for (key, value) in table {
        let id = key.replace('-', "_");
        let Some(arg) = sub_cmd
            .get_arguments()
            .find(|a| a.get_id() == id.as_str() && a.get_long().is_some() && id != "config")
        else {
            let keys: Vec<String> = sub_cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config" && *l != "help")
                .map(str::to_string)
                .collect();
            return Err(exit::usage(format!(
                "--config {}: unknown key {key:?} (the keys are `blockcast {sub}`'s flags: {})",
                path.display(),
                keys.join(", ")
            )));
        };
        if matches!(
            sub_matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().expect("checked above"));
        let bad =
            |what: &str| exit::usage(format!("--config {}: {key} takes {what}", path.display()));
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return Err(bad("a string or a number")),
            })
        };
        let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if b {
                    argv.push(flag.into());
                }
            }
            toml::Value::Array(items) => {
                for v in &items {
                    argv.push(flag.clone().into());
                    argv.push(scalar(v)?.into());
                }
            }
            v => {
                argv.push(flag.into());
                argv.push(scalar(&v)?.into());
            }
        }
    }
    let matches = cmd.try_get_matches_from(&argv)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Where events go: a file (appended) or standard output, one JSON document per line with
/// `v`, `ts` (RFC 3339, UTC) and `event`.
pub fn event_log(path: Option<&Path>) -> Result<EventSink> {
    let Some(path) = path else {
        return Ok(blockcast_node::events::discard());
    };
    let out: Box<dyn Write + Send> = if path == Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| exit::output_err(format!("--events {}: {e}", path.display())))?,
        )
    };
    let out = Mutex::new(out);
    Ok(Arc::new(move |e: NodeEvent| {
        let mut v = serde_json::to_value(&e).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("v".into(), 1.into());
            m.insert("ts".into(), rfc3339_now().into());
        }
        if let Ok(mut w) = out.lock() {
            let _ = writeln!(w, "{v}");
            let _ = w.flush();
        }
    }))
}

/// Now as RFC 3339 in UTC, to the millisecond.
fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Tells systemd (`Type=notify`) the service is up, and what it does; nothing outside
/// systemd.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Says the service is up: on stderr unless `quiet`, and to systemd.
fn ready(quiet: bool, line: &str) {
    if !quiet {
        eprintln!("blockcast: {line}");
    }
    notify_ready(line);
}

impl crate::OpsArgs {
    /// `--metrics`, parsed.
    fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        self.metrics
            .as_deref()
            .map(|m| parse_addr("--metrics", m))
            .transpose()
    }

    /// `--events`, opened.
    fn event_sink(&self) -> Result<EventSink> {
        event_log(self.events.as_deref())
    }
}

/// Tells systemd the service is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

pub fn parse_addr(flag: &str, s: &str) -> Result<SocketAddr> {
    let a: SocketAddr = s.parse().map_err(|_| {
        exit::usage(format!(
            "{flag} {s:?} is not ADDRESS:PORT (e.g. 10.0.0.1:9100)"
        ))
    })?;
    Ok(a)
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        return Err(exit::usage(format!(
            "{flag} must be a number of seconds, at least 0"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `blockcast origin`.
pub fn origin(a: crate::OriginArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let iface = crate::resolve_iface(&a.iface)?;
    let listen = parse_addr("--listen", &a.listen)?;
    let groups = blockcast_node::origin::GroupPool::parse(&a.groups)
        .map_err(|e| exit::usage(format!("--groups {e}")))?;
    if !a.catalog.is_dir() {
        return Err(exit::input(format!(
            "--catalog {} is not a directory",
            a.catalog.display()
        )));
    }
    let geometry = crate::geometry(a.unit_size, a.units_per_block, iface, 0)?;
    let cfg = blockcast_node::origin::OriginConfig {
        catalog: a.catalog.clone(),
        iface,
        listen,
        groups,
        data_port: a.data_port,
        ttl: a.ttl,
        rate: units::parse_rate(&a.rate).map_err(exit::usage)?,
        geometry,
        batch_window: seconds("--batch-window", a.batch_window)?,
        join_grace: seconds("--join-grace", a.join_grace)?,
        threads: a.threads.max(1),
        max_sessions: a.max_sessions.max(1),
        signer: crate::signer(a.sign.as_ref())?,
        hash_cache: if a.no_hash_cache {
            None
        } else {
            a.hash_cache
                .or_else(blockcast_node::HashCache::default_dir)
                .map(blockcast_node::HashCache::new)
        },
        critical: a.critical.clone(),
        rescan: seconds("--rescan", a.rescan)?.max(Duration::from_millis(10)),
        settle: seconds("--settle", a.settle)?,
        answers_per_sec: a.answers_per_sec.max(1.0),
        receiver_timeout: seconds("--receiver-timeout", a.receiver_timeout)?
            .max(Duration::from_millis(100)),
        originals_factor: blockcast_proto::ORIGINALS_FACTOR,
        xor_repairs: true,
        http: a
            .http
            .as_deref()
            .map(|h| parse_addr("--http", h))
            .transpose()?,
        metrics: a.ops.metrics_addr()?,
    };
    let events = a.ops.event_sink()?;
    let quiet = out.quiet || out.json;
    let summary = blockcast_node::origin::origin(&cfg, stop, events, &mut |r| {
        let line = format!(
            "origin: {} on {} (groups {}){}{}",
            cfg.catalog.display(),
            r.listen,
            a.groups,
            r.http
                .map(|h| format!(", API http://{h}/"))
                .unwrap_or_default(),
            r.metrics
                .map(|m| format!(", metrics http://{m}/metrics"))
                .unwrap_or_default()
        );
        ready(quiet, &line);
    });
    notify_stopping();
    let summary = match summary {
        Ok(s) => s,
        // Stopped by a signal is how a daemon ends: not a failure.
        Err(e) => return Err(exit::node(e)),
    };
    if out.json {
        json::print(&RoleJson {
            role: "origin",
            body: &summary,
        });
    } else {
        out.say(&format!(
            "origin: {} session(s) ({} failed), {} request(s) ({} granted, {} not in the catalog, {} over the answer rate) in {:.1} s",
            summary.sessions,
            summary.session_failures,
            summary.requests,
            summary.granted,
            summary.not_found,
            summary.rate_limited,
            summary.seconds
        ));
    }
    Ok(())
}

/// A document with its role first.
#[derive(Serialize)]
struct RoleJson<'a, T: Serialize> {
    role: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// One object of `fetch --json`.
#[derive(Serialize)]
struct FetchedJson {
    name: String,
    path: Option<String>,
    bytes: u64,
    blake3: Option<String>,
    seconds: f64,
    /// Already whole here: nothing was received.
    held: bool,
    session: Option<u32>,
    error: Option<String>,
}

#[derive(Serialize)]
struct FetchJson {
    role: &'static str,
    origin: SocketAddr,
    objects: Vec<FetchedJson>,
    bytes: u64,
    seconds: f64,
}

fn client_config(
    origin: &str,
    iface: &str,
    timeout: f64,
    trust: &crate::TrustArgs,
) -> Result<blockcast_node::client::ClientConfig> {
    Ok(blockcast_node::client::ClientConfig {
        origin: parse_addr("--origin", origin)?,
        iface: crate::resolve_iface(iface)?,
        timeout: seconds("--request-timeout", timeout)?.max(Duration::from_millis(100)),
        trust: trust.keys()?,
    })
}

/// `blockcast fetch`.
pub fn fetch(a: crate::FetchArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let started = std::time::Instant::now();
    let client = client_config(&a.origin, &a.iface, a.request_timeout, &a.trust)?;
    let mut names: Vec<String> = Vec::new();
    for n in &a.names {
        if !blockcast_proto::wire::valid_name(n) {
            return Err(exit::usage(format!(
                "{n:?} is not an object name (a relative path without . or .. components)"
            )));
        }
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let cfg = blockcast_node::fetch::FetchConfig {
        client: client.clone(),
        out: a.out.clone(),
        receive_timeout: seconds("--timeout", a.timeout)?.max(Duration::from_millis(100)),
        rcvbuf: a.rcvbuf,
        threads: a.threads.unwrap_or_else(|| (crate::cores() / 2).max(1)),
        retries: 3,
    };
    let events = event_log(a.events.as_deref())?;
    let parallel = a.parallel.unwrap_or(names.len()).clamp(1, 64);
    // Each name on a thread of its own, at most `parallel` at once.
    let results: Vec<(
        String,
        Result<blockcast_node::fetch::Fetched, blockcast_node::NodeError>,
    )> = std::thread::scope(|s| {
        let mut out_v = Vec::new();
        for chunk in names.chunks(parallel) {
            let hs: Vec<_> = chunk
                .iter()
                .map(|n| {
                    let (cfg, events) = (&cfg, &events);
                    (
                        n.clone(),
                        s.spawn(move || {
                            blockcast_node::fetch::fetch_one(
                                cfg,
                                n,
                                None,
                                stop,
                                events,
                                &mut |_| {},
                            )
                        }),
                    )
                })
                .collect();
            for (n, h) in hs {
                let r = h
                    .join()
                    .unwrap_or(Err(blockcast_node::NodeError::panicked("a fetch thread")));
                out_v.push((n, r));
            }
        }
        out_v
    });
    let mut first_err = None;
    let mut objects = Vec::new();
    for (name, r) in results {
        match r {
            Ok(f) => {
                out.say(&format!(
                    "{}: {} bytes {} in {:.2} s ({})",
                    f.name,
                    f.bytes,
                    if f.held { "already here" } else { "fetched" },
                    f.seconds,
                    f.path.display()
                ));
                objects.push(FetchedJson {
                    name: f.name,
                    path: Some(f.path.display().to_string()),
                    bytes: f.bytes,
                    blake3: Some(blockcast_proto::auth::hex(&f.hash)),
                    seconds: f.seconds,
                    held: f.held,
                    session: f.session,
                    error: None,
                });
            }
            Err(e) => {
                let msg = e.to_string();
                objects.push(FetchedJson {
                    name: name.clone(),
                    path: None,
                    bytes: 0,
                    blake3: None,
                    seconds: 0.0,
                    held: false,
                    session: None,
                    error: Some(msg.clone()),
                });
                if !out.json {
                    eprintln!("blockcast: {name}: {msg}");
                }
                first_err.get_or_insert(e);
            }
        }
    }
    if out.json {
        json::print(&FetchJson {
            role: "fetch",
            origin: client.origin,
            bytes: objects.iter().map(|o| o.bytes).sum(),
            objects,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(exit::node(e)),
    }
}

/// `blockcast agent`.
pub fn agent(a: crate::AgentArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let (origin, iface, dir) = (&a.origin, &a.iface, &a.dir);
    let client = client_config(origin, iface, a.request_timeout, &a.trust)?;
    let subscribe = a
        .subscribe
        .iter()
        .map(|p| {
            blockcast_node::glob::Pattern::new(p)
                .map_err(|e| exit::usage(format!("--subscribe {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let cfg = blockcast_node::agent::AgentConfig {
        fetch: blockcast_node::fetch::FetchConfig {
            client,
            out: dir.clone(),
            receive_timeout: seconds("--timeout", a.timeout)?.max(Duration::from_millis(100)),
            rcvbuf: a.rcvbuf,
            threads: a.threads.unwrap_or(1).max(1),
            retries: 3,
        },
        state_dir: a
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.join(".blockcast-agent")),
        subscribe,
        concurrency: a.concurrency.max(1),
        hook: a.hook.clone(),
        poll: seconds("--poll", a.poll)?.max(Duration::from_millis(100)),
        once: a.once,
        metrics: a.ops.metrics_addr()?,
    };
    let events = a.ops.event_sink()?;
    let quiet = out.quiet || out.json;
    let r = blockcast_node::agent::agent(&cfg, stop, events, &mut |m| {
        let line = format!(
            "agent: {} from {}{}",
            dir.display(),
            origin,
            m.map(|m| format!(", metrics http://{m}/metrics"))
                .unwrap_or_default()
        );
        ready(quiet, &line);
    });
    notify_stopping();
    let summary = r.map_err(exit::node)?;
    if out.json {
        json::print(&RoleJson {
            role: "agent",
            body: &summary,
        });
    } else {
        out.say(&format!(
            "agent: {} object(s) fetched ({} bytes), {} held, {} failure(s), {} poll(s) in {:.1} s",
            summary.synced.len(),
            summary.received_bytes,
            summary.held,
            summary.failures,
            summary.polls,
            summary.seconds
        ));
    }
    Ok(())
}

/// `blockcast completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "blockcast", &mut std::io::stdout());
    Ok(())
}

/// `blockcast man [--dir DIR]`: the man page on standard output, or one page per command
/// written to DIR.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("writing the man page")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| exit::output_err(format!("--dir {}: {e}", dir.display())))?;
    let write = |name: &str, c: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).title(name).render(&mut buf)?;
        std::fs::write(&path, buf).map_err(|e| exit::output_err(format!("{}: {e}", path.display())))
    };
    write("blockcast", cmd.clone())?;
    for sub in cmd.get_subcommands() {
        let name = format!("blockcast-{}", sub.get_name());
        write(&name, sub.clone())?;
    }
    Ok(())
}

/// `blockcast edge`.
pub fn edge(a: crate::EdgeArgs, stop: &AtomicBool, out: &output::Output) -> Result<()> {
    let client = match &a.origin {
        Some(origin) => Some(client_config(
            origin,
            &a.iface,
            a.request_timeout,
            &a.trust,
        )?),
        None => None,
    };
    let groups = a
        .group
        .iter()
        .map(|g| crate::parse_group("--group", g))
        .collect::<Result<Vec<_>>>()?;
    // Checked here: flags the config file may give are parsed leniently (`with_config`).
    if client.is_none() && groups.is_empty() {
        return Err(exit::usage(
            "the edge needs --origin, --group, or both (where its content comes from)".into(),
        ));
    }
    let http = parse_addr("--http", &a.http)?;
    let ram = crate::parse_size(&a.ram)?;
    let disk_bytes = crate::parse_size(&a.disk_size)?;
    std::fs::create_dir_all(&a.disk)
        .with_context(|| format!("--disk {}", a.disk.display()))
        .map_err(|e| exit::input(format!("{e:#}")))?;
    let cfg = blockcast_node::edge::EdgeConfig {
        client,
        groups: groups.clone(),
        iface: crate::resolve_iface(&a.iface)?,
        trust: a.trust.keys()?,
        http,
        cache: blockcast_node::edge::CacheConfig {
            ram_bytes: ram,
            disk_dir: a.disk.join("blocks"),
            disk_bytes,
        },
        staging: a.disk.join("staging"),
        index: a.disk.join("objects"),
        receive_timeout: seconds("--timeout", a.timeout)?.max(Duration::from_millis(100)),
        rcvbuf: a.rcvbuf,
        wait_timeout: seconds("--wait-timeout", a.wait_timeout)?.max(Duration::from_millis(100)),
        max_connections: a.max_connections.max(1),
        metrics: a.ops.metrics_addr()?,
    };
    let events = a.ops.event_sink()?;
    let quiet = out.quiet || out.json;
    // The edge's threads watch a flag of their own, raised when the user's stop is.
    let edge_stop = Arc::new(AtomicBool::new(false));
    let summary = std::thread::scope(|s| {
        let watcher = {
            let edge_stop = edge_stop.clone();
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) && !edge_stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(50));
                }
                edge_stop.store(true, Ordering::Relaxed);
            })
        };
        let r = blockcast_node::edge::edge(cfg, edge_stop.clone(), events, &mut |r| {
            let from: Vec<String> = a
                .origin
                .iter()
                .map(|o| format!("origin {o}"))
                .chain(groups.iter().map(|g| format!("group {g}")))
                .collect();
            let line = format!(
                "edge: http://{}/ from {}{}",
                r.http,
                from.join(", "),
                r.metrics
                    .map(|m| format!(", metrics http://{m}/metrics"))
                    .unwrap_or_default()
            );
            ready(quiet, &line);
        });
        edge_stop.store(true, Ordering::Relaxed);
        watcher.thread().unpark();
        let _ = watcher.join();
        r
    });
    notify_stopping();
    let summary = summary.map_err(exit::node)?;
    if out.json {
        json::print(&RoleJson {
            role: "edge",
            body: &summary,
        });
    } else {
        out.say(&format!(
            "edge: {} request(s), {} fill(s) ({} failed), {} bytes from the origin, {} from groups, {} bytes sent from RAM and {} from disk in {:.1} s",
            summary.requests,
            summary.fills,
            summary.fill_failures,
            summary.origin_bytes,
            summary.group_bytes,
            summary.sent_bytes_ram,
            summary.sent_bytes_disk,
            summary.seconds
        ));
    }
    Ok(())
}
