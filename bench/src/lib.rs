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
}
