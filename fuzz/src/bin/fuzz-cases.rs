//! `fuzz-cases TARGET|all CASES [SEED]`: runs fuzz targets on their committed corpus and
//! CASES generated and mutated inputs (no coverage feedback; libFuzzer has it), printing cases,
//! time and cases per second. An input that panics is saved as `fuzz/crash-TARGET` first.
//! `fuzz-cases --write-corpus` writes the seed inputs into fuzz/corpus/.

use std::time::Instant;

use blockcast_fuzz::{corpus, corpus_dir, run_cases, seeds, TARGETS};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--write-corpus") {
        for (name, _) in TARGETS {
            let dir = corpus_dir().join(name);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            for (i, s) in seeds(name).iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("write seed");
            }
        }
        return;
    }
    let (Some(which), Some(cases)) = (args.first(), args.get(1).and_then(|c| c.parse().ok()))
    else {
        eprintln!("usage: fuzz-cases TARGET|all CASES [SEED] | --write-corpus");
        std::process::exit(2);
    };
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    for (name, target) in TARGETS.iter().filter(|(n, _)| which == "all" || which == n) {
        let c = corpus(&corpus_dir(), name);
        let crash = corpus_dir().with_file_name(format!("crash-{name}"));
        let mut last = Vec::new();
        let started = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_cases(*target, &c, cases, seed, |i| {
                last.clear();
                last.extend_from_slice(i);
            })
        }));
        let secs = started.elapsed().as_secs_f64();
        match r {
            Ok(s) => println!(
                "{name}: {} cases ({} corpus), {:.1} s, {:.0} cases/s, {} bytes, no failure",
                s.cases,
                s.corpus,
                secs,
                s.cases as f64 / secs.max(1e-9),
                s.bytes
            ),
            Err(_) => {
                std::fs::write(&crash, &last).expect("save the failing input");
                println!(
                    "{name}: FAILED after {secs:.1} s; input saved as {}",
                    crash.display()
                );
                std::process::exit(1);
            }
        }
    }
}
