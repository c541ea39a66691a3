//! deploy/: every systemd unit passes `systemd-analyze verify` (pointed at the binary under
//! test), every example config is accepted by the command it is for (a key that is not one
//! of its flags is refused before anything runs), and the Kubernetes DaemonSet parses as YAML
//! with the agent on the host network and its config mounted where its arguments say.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

/// Where the units expect the binary.
const INSTALLED: &str = "/usr/local/bin/blockcast";

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// Every `*.service` in deploy/.
fn units() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(deploy(""))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".service"))
        .collect();
    names.sort();
    names
}

/// The one value of `key=` in a unit.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let mut found = unit.lines().filter_map(|l| l.strip_prefix(prefix.as_str()));
    let v = found
        .next()
        .unwrap_or_else(|| panic!("no {key}= in\n{unit}"));
    assert!(found.next().is_none(), "{key}= twice");
    v
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let why = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_none()
        .then(|| {
            "systemd-analyze is not installed (Debian package systemd; .ci/run installs it)"
                .to_string()
        });
    if !can_run(why) {
        return;
    }
    let dir = Scratch::new("units");
    let names = units();
    assert_eq!(
        names,
        [
            "blockcast-agent.service",
            "blockcast-origin.service",
            "blockcast-relay.service"
        ]
    );
    for name in &names {
        let text = read(name);
        assert_eq!(unit_value(&text, "Type"), "notify", "{name}");
        // The unit runs its command with the config file deploy/ ships for it.
        let exec = unit_value(&text, "ExecStart");
        let command = name
            .trim_start_matches("blockcast-")
            .trim_end_matches(".service");
        assert_eq!(
            exec,
            format!("{INSTALLED} {command} --config /etc/blockcast/{command}.toml"),
            "{name}"
        );
        assert!(
            deploy(&format!("{command}.toml")).exists(),
            "no deploy/{command}.toml"
        );
        for hardening in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
        ] {
            assert!(
                text.lines().any(|l| l == hardening),
                "{name} lacks {hardening}"
            );
        }
        // verify checks that the binary exists: point it at the one under test.
        let path = dir.path(name);
        std::fs::write(&path, text.replace(INSTALLED, BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // It also reports on the system's own units; only lines about ours count.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(name.as_str()))
            .collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {name}: {}\n{stderr}",
            out.status
        );
    }
}

/// Runs `blockcast ARGS` (which must fail) and returns its exit code and standard error.
fn fails(dir: &Scratch, name: &str, args: &[&str]) -> (i32, String) {
    let mut p = Proc::spawn(&dir.0, name, args.iter().copied());
    let st = p.wait_within(std::time::Duration::from_secs(20));
    (st.code().unwrap_or(-1), p.stderr())
}

/// A config is accepted when the command gets past it to a later check that a flag breaks on
/// purpose: every key was one of its flags and every value of the right kind.
fn assert_accepted(config: &Path, args: &[&str], broken: &str) {
    let name = config.file_name().unwrap().to_str().unwrap();
    let dir = Scratch::new(&format!("run-{}-{name}", args[0]));
    let config = config.to_str().unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config]);
    let (code, stderr) = fails(&dir, "cmd", &all);
    assert!(
        stderr.contains(broken) && !stderr.contains("--config"),
        "{config} (exit {code}): {stderr}"
    );
}

#[test]
fn every_config_file_is_accepted_by_its_command() {
    let dir = Scratch::new("configs");
    let none = dir.path("no-such-catalog");
    assert_accepted(
        &deploy("origin.toml"),
        &[
            "origin",
            "--iface",
            IFACE,
            "--catalog",
            none.to_str().unwrap(),
        ],
        "is not a directory",
    );
    assert_accepted(
        &deploy("agent.toml"),
        &[
            "agent",
            "--iface",
            IFACE,
            "--dir",
            dir.0.to_str().unwrap(),
            "--poll=-1",
        ],
        "--poll must be",
    );
    assert_accepted(
        &deploy("relay.toml"),
        &[
            "relay",
            "--iface",
            IFACE,
            "--downstream-iface",
            IFACE,
            "--failover-after=0",
        ],
        "--failover-after must be positive",
    );
    // And a key that is no flag is refused, naming it.
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "iface = \"lo\"\nsubscribe = [\"*\"]\n").unwrap();
    let (code, stderr) = fails(&dir, "bad", &["origin", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown key \"subscribe\""), "{stderr}");
}

fn get<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, k| &y[*k])
}

#[test]
fn the_agent_daemonset_parses_and_runs_agents_on_the_host_network() {
    let docs = YamlLoader::load_from_str(&read("agent-daemonset.yaml")).expect("valid YAML");
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in the YAML"))
    };
    let ds = of_kind("DaemonSet");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = get(ds, &["spec", "template", "spec"]);
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    // The selector picks the template's pods.
    let label = "app.kubernetes.io/name";
    assert_eq!(
        get(ds, &["spec", "selector", "matchLabels", label]),
        get(ds, &["spec", "template", "metadata", "labels", label])
    );
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["agent", "--config", "/etc/blockcast/agent.toml"]);
    // The interface is the node's address.
    let env = c["env"].as_vec().unwrap();
    let iface = env
        .iter()
        .find(|e| e["name"].as_str() == Some("BLOCKCAST_IFACE"))
        .unwrap();
    assert_eq!(
        get(iface, &["valueFrom", "fieldRef", "fieldPath"]).as_str(),
        Some("status.hostIP")
    );
    // The config directory is the ConfigMap, and it holds agent.toml.
    let mounts = c["volumeMounts"].as_vec().unwrap();
    let conf = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/etc/blockcast"))
        .expect("/etc/blockcast mounted");
    let volumes = pod["volumes"].as_vec().unwrap();
    let vol = volumes.iter().find(|v| v["name"] == conf["name"]).unwrap();
    let cm_name = get(vol, &["configMap", "name"]).as_str().unwrap();
    let cm = of_kind("ConfigMap");
    assert_eq!(get(cm, &["metadata", "name"]).as_str(), Some(cm_name));
    assert_eq!(
        get(cm, &["metadata", "namespace"]),
        get(ds, &["metadata", "namespace"])
    );
    let toml_text = get(cm, &["data", "agent.toml"])
        .as_str()
        .expect("agent.toml");
    // That config is one the agent takes (with the interface and directory the pod's
    // environment gives it).
    let dir = Scratch::new("daemonset");
    let file = dir.path("daemonset-agent.toml");
    std::fs::write(&file, toml_text).unwrap();
    assert_accepted(
        &file,
        &[
            "agent",
            "--iface",
            IFACE,
            "--dir",
            dir.0.to_str().unwrap(),
            "--poll=-1",
        ],
        "--poll must be",
    );
}
