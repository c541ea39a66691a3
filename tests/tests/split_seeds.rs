//! Split mode over ten seeds (37-46), one line per run and the mean and largest server cost
//! and virtual time: the before/after figures of docs/DESIGN.md's split entries. Every run
//! must end with every surviving member complete and identical.
//!
//! `SPLIT_RUN=<name> cargo test -p blockcast-sim --test split_seeds -- --ignored --nocapture`,
//! with a name of [`config`] (`SPLIT_SEEDS=38,39` for other seeds).

use std::time::Duration;

use blockcast_sim::{run_split, SplitSimConfig, StoreKind};

/// The runs measured, by name.
fn config(name: &str, seed: u64) -> Option<SplitSimConfig> {
    Some(match name {
        // Three zones of five.
        "15-5pct" => SplitSimConfig::small(seed, 3, 5, 0.05),
        "15-1pct" => SplitSimConfig::small(seed, 3, 5, 0.01),
        // The test `three_hundred_members_in_four_zones_with_loss_and_a_death`.
        "300-four-zones" => {
            let mut cfg = SplitSimConfig::small(seed, 4, 75, 0.01);
            cfg.object_size = 128 << 10;
            cfg.store = StoreKind::Hashed;
            cfg.deaths = vec![
                (3, Duration::from_millis(30)),
                (150, Duration::from_millis(60)),
            ];
            cfg
        }
        // Four lossless zones of 20, the far zone served first.
        "80-lossless" => SplitSimConfig {
            object_size: 128 << 10,
            ..SplitSimConfig::small(seed, 4, 20, 0.0)
        },
        "300" => SplitSimConfig::at_scale(seed, 300),
        "3000" => SplitSimConfig::at_scale(seed, 3000),
        "300-no-death" => SplitSimConfig {
            deaths: Vec::new(),
            ..SplitSimConfig::at_scale(seed, 300)
        },
        "3000-no-death" => SplitSimConfig {
            deaths: Vec::new(),
            ..SplitSimConfig::at_scale(seed, 3000)
        },
        _ => return None,
    })
}

#[test]
#[ignore = "minutes of CPU at 3,000 members; run by hand for figures"]
fn split_runs_over_ten_seeds() {
    let name = std::env::var("SPLIT_RUN").unwrap_or_else(|_| "15-5pct".into());
    let seeds: Vec<u64> = match std::env::var("SPLIT_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => (37..=46).collect(),
    };
    let (mut costs, mut times) = (Vec::new(), Vec::new());
    for &seed in &seeds {
        let cfg = config(&name, seed).unwrap_or_else(|| panic!("no run named {name}"));
        let r = run_split(&cfg);
        let cost = r.server_units as f64 / r.object_units as f64;
        let ms = r.time.as_secs_f64() * 1e3;
        eprintln!(
            "{name} seed {seed}: {}/{} identical, server {cost:.3}x the object, {ms:.1} ms virtual, {} NACKs, plan epoch {}, wall {:?}",
            r.identical, r.expected, r.nacks, r.plan_epoch, r.wall
        );
        r.assert_ok();
        costs.push(cost);
        times.push(ms);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{name}: server mean {:.3}x, largest {:.3}x; virtual time mean {:.1} ms, largest {:.1} ms",
        mean(&costs),
        max(&costs),
        mean(&times),
        max(&times)
    );
}
