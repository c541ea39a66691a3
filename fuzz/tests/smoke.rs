//! A short run of every fuzz target inside `cargo test`: the committed corpus as it is, then a
//! few thousand generated and mutated inputs (bench/fuzz.sh runs millions, and libFuzzer).

use blockcast_fuzz::{
    corpus, corpus_dir, lossy_script, run_cases, seeds, session_datagrams, TARGETS,
};

/// Inputs per target beyond the corpus (the session targets run a whole session per input).
fn cases(name: &str) -> u64 {
    match name {
        "receiver" | "sender" => 300,
        _ => 5_000,
    }
}

#[test]
fn every_target_survives_its_corpus_and_a_short_generated_run() {
    for (name, target) in TARGETS {
        let c = corpus(&corpus_dir(), name);
        assert!(
            !c.is_empty(),
            "{name}: no committed corpus (fuzz-cases --write-corpus)"
        );
        let stats = run_cases(*target, &c, cases(name), 1, |_| {});
        assert_eq!(stats.cases, cases(name) + c.len() as u64, "{name}");
    }
}

#[test]
fn the_committed_corpus_is_what_a_clean_session_sends() {
    // The seeds are made from the protocol as it is: a wire change shows up here, and the
    // corpus is written again (fuzz-cases --write-corpus).
    for (name, _) in TARGETS {
        let c = corpus(&corpus_dir(), name);
        for s in seeds(name) {
            assert!(
                c.contains(&s),
                "{name}: a seed is missing from the committed corpus"
            );
        }
    }
}

#[test]
fn the_session_scripts_complete_and_send_every_kind_the_wire_target_starts_from() {
    // 7 blocks, two receivers: a clean session and a lossy one both verify everything.
    assert_eq!(session_datagrams(&[]).1, 14);
    assert_eq!(session_datagrams(&lossy_script()).1, 14);
    let kinds: std::collections::BTreeSet<u8> = seeds("wire").iter().map(|p| p[3]).collect();
    // Data, parity, announce, manifest chunk, join, accept, leave, NACK, receipt, priority,
    // done, solicit.
    assert_eq!(
        kinds,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13].into(),
        "kinds seen: {kinds:?}"
    );
}
