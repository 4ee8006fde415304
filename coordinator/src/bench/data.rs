//! The benchmark's data: per party, a CSV of `n` distinct keys (a share
//! common to every party, the rest its own) with a small integer feature,
//! and an analysis summing every party's feature over the intersection.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Party name `i` (`bank-a`, `bank-b`, …).
pub fn party(i: usize) -> String {
    format!("bank-{}", (b'a' + i as u8) as char)
}

/// Writes party `i`'s table (`key,amount`) for `keys` keys of which
/// `common` are shared by every party; returns its path.
pub fn write_table(dir: &Path, i: usize, keys: u64, common: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.csv", party(i)));
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    writeln!(w, "key,amount")?;
    for k in 0..keys {
        let amount = (k.wrapping_mul(7919) + i as u64) % 1000 + 1;
        if k < common {
            writeln!(w, "c{k:012},{amount}")?;
        } else {
            writeln!(w, "u{i}-{k:012},{amount}")?;
        }
    }
    w.flush()?;
    Ok(path)
}

/// The benchmark's analysis for `parties` parties: one row per key, the
/// count and each party's `amount` summed over the intersection, matched
/// by `psi`.
pub fn analysis(parties: usize, psi: cleanroom::Psi) -> String {
    let mut t = format!("name = \"bench\"\nrecipient = \"{}\"\n", party(parties - 1));
    let mut aggs = vec!["\"count\"".to_string()];
    for i in 0..parties {
        t += &format!(
            "[parties.{}]\nsql = \"SELECT key, amount FROM t\"\n",
            party(i)
        );
        aggs.push(format!("\"sum({}.amount)\"", party(i)));
    }
    t + &format!(
        "[output]\naggregates = [{}]\n[privacy]\nmin_matched = 1\n[protocol]\npsi = \"{psi}\"\n",
        aggs.join(", ")
    )
}

/// Parses a key count: `1000`, `10k`, `1M`, `2.5M`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a count like 10k or 1M"))?;
    if !(v > 0.0 && v * mul <= 1e9) {
        return Err(format!("{s:?}: counts run from 1 to 1G"));
    }
    Ok((v * mul).round() as u64)
}

/// Short label of a count (`10k`, `1M`).
pub fn label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(100_000) {
        format!("{}M", n as f64 / 1e6)
    } else if n >= 1000 && n.is_multiple_of(100) {
        format!("{}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("2.5M"), Ok(2_500_000));
        assert_eq!(parse_count("123"), Ok(123));
        assert!(parse_count("x").is_err());
        assert!(parse_count("0").is_err());
        assert_eq!(label(10_000), "10k");
        assert_eq!(label(1_000_000), "1M");
        assert_eq!(label(2_500_000), "2.5M");
    }
}
