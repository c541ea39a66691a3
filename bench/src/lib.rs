//! Helpers the benchmark binaries share.

/// Parses a byte count with an optional k, M or G suffix (powers of 1024): "256M", "1G".
///
/// # Panics
/// On a value that is not a number: these are benchmark flags, checked by the person running.
pub fn size(s: &str) -> u64 {
    let (n, m) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    (n.parse::<f64>().expect("a size") * m as f64) as u64
}

/// The median (the upper one of an even count); 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The machine's CPU time so far, in clock ticks, from the aggregate `cpu` line of
/// /proc/stat: (steal, total from user to steal). Steal is the time the hypervisor gave this
/// guest's CPUs to others: on a shared host a slow run with much of it is the host's doing.
/// `None` where /proc/stat cannot be read.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 8).then(|| (f[7], f.iter().sum()))
}

/// Per cent of the machine's CPU time the hypervisor took between two [`cpu_ticks`] readings.
pub fn steal_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            100.0 * s1.saturating_sub(s0) as f64 / (t1 - t0) as f64
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_medians() {
        assert_eq!(size("256M"), 256 << 20);
        assert_eq!(size("1.5k"), 1536);
        assert_eq!(size("1000"), 1000);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn steal_is_read_from_the_cpu_line() {
        let a = "cpu  100 0 50 800 10 0 10 30 0 0\ncpu0 50 0 25 400 5 0 5 15 0 0\n";
        let b = "cpu  200 0 100 1500 20 0 20 160 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_cpu_ticks(a), Some((30, 1000)));
        assert_eq!(parse_cpu_ticks(b), Some((160, 2000)));
        assert_eq!(steal_pct(parse_cpu_ticks(a), parse_cpu_ticks(b)), 13.0);
        assert_eq!(parse_cpu_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(steal_pct(None, parse_cpu_ticks(b)), 0.0);
    }
}
