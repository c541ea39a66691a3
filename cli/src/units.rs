//! Sizes and rates as people type them (README, "Sizes and rates"): the one place they are
//! parsed.
//!
//! - A bare number is bytes (`1048576`); a fraction is allowed with a suffix (`1.5G`).
//! - `k`, `M`, `G`, `T` (one letter, any case) and `KiB`, `MiB`, `GiB`, `TiB` are powers of
//!   1024; `kB`/`KB`, `MB`, `GB`, `TB` are powers of 1000 (as GNU `dd` reads them).
//! - A rate is a size per second: `/s` may follow (`20MB/s`, `512M`); `bit/s` or `bps`
//!   makes it bits (`10Gbit/s` = 1.25 GB/s). A lone `b` (`20Mb/s`) is refused as ambiguous.

/// Bytes in `s`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1048576, 512M, 512MB, 512MiB, 1G)"))?;
    let mult = multiplier(unit.trim()).ok_or_else(|| {
        format!(
            "{s:?}: unknown unit {:?} (k, M, G, T or KiB.. for 1024s; kB, MB, GB, TB for 1000s)",
            unit.trim()
        )
    })?;
    let v = n * mult as f64;
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(v as u64)
}

/// Bytes per second in `s`; `auto` is `None`.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let per_sec = t.strip_suffix("/s").unwrap_or(t);
    let (size, bits) = if let Some(x) = per_sec.strip_suffix("bit") {
        (x, true)
    } else if let Some(x) = per_sec.strip_suffix("bps") {
        (x, true)
    } else {
        (per_sec, false)
    };
    if !bits && size.ends_with('b') {
        return Err(format!(
            "{s:?}: write B for bytes or bit for bits (20MB/s, 160Mbit/s)"
        ));
    }
    // Bit rates are decimal whatever the letter: 10Gbit/s is 10^10 bits.
    let bytes = if bits {
        let digits = size
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(size.len());
        let (num, unit) = size.split_at(digits);
        let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a rate"))?;
        let m = match unit {
            "" => 1.0,
            "k" | "K" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} before bit/s")),
        };
        (n * m / 8.0) as u64
    } else {
        parse_size(size)?
    };
    if bytes == 0 {
        return Err(format!("{s:?}: a rate must be positive"));
    }
    Ok(Some(bytes))
}

fn multiplier(unit: &str) -> Option<u64> {
    const K: u64 = 1024;
    Some(match unit {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "kiB" => K,
        "m" | "M" | "MiB" => K * K,
        "g" | "G" | "GiB" => K * K * K,
        "t" | "T" | "TiB" => K * K * K * K,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_people_type_them() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size(" 2 GB ").unwrap(), 2_000_000_000);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
    }

    #[test]
    fn rates_as_people_type_them() {
        assert_eq!(parse_rate("auto").unwrap(), None);
        assert_eq!(parse_rate("20MB/s").unwrap(), Some(20_000_000));
        assert_eq!(parse_rate("20MiB/s").unwrap(), Some(20 << 20));
        assert_eq!(parse_rate("512M").unwrap(), Some(512 << 20));
        assert_eq!(parse_rate("10Gbit/s").unwrap(), Some(1_250_000_000));
        assert_eq!(parse_rate("100Mbps").unwrap(), Some(12_500_000));
        assert!(parse_rate("20Mb/s").is_err(), "ambiguous");
        assert!(parse_rate("0").is_err());
    }
}
