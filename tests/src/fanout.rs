//! Runs of consecutive hosts on several threads: multicast fan-out to a large group, and many
//! hosts running at one instant.

/// Threads that deliver copies: `configured`, or one per core if 0.
pub(crate) fn threads(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs `deliver(i, node, buf, fx)` for every node (`nodes[j]` is node `first + j`) on
/// `threads` threads, each over its own run of consecutive nodes with its own buffer and
/// effects. Returns the effects run by run in node order, so that applying them in that
/// order does the same as one thread delivering to every node.
pub(crate) fn in_parallel<N: Send, F: Default + Send>(
    nodes: &mut [N],
    first: usize,
    threads: usize,
    deliver: impl Fn(usize, &mut N, &mut [u8], &mut F) + Sync,
) -> Vec<F> {
    let chunk = nodes.len().div_ceil(threads);
    let deliver = &deliver;
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .chunks_mut(chunk)
            .enumerate()
            .map(|(c, nodes)| {
                s.spawn(move || {
                    let mut fx = F::default();
                    let mut buf = vec![0u8; 65_536];
                    for (j, node) in nodes.iter_mut().enumerate() {
                        deliver(first + c * chunk + j, node, &mut buf, &mut fx);
                    }
                    fx
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a delivery thread panicked"))
            .collect()
    })
}
