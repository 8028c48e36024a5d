//! Times for people: event and phase times are milliseconds since the Unix epoch (the proposer's
//! clock); the CLI and the console show them as RFC 3339 in UTC, and the CLI accepts them as a
//! date, an epoch, or "some time ago".

use crate::Timestamp;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), after H. Hinnant.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 in UTC with milliseconds: `2026-11-25T22:04:45.123Z`.
pub fn format(t: Timestamp) -> String {
    let ms = t.0 as i64;
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil_from_days(days);
    let s = rem / 1000;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", s / 3600, s / 60 % 60, s % 60, rem % 1000)
}

/// A duration in ms as people read it: `850ms`, `12.4s`, `3m05s`, `2h10m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Parses a point in time: epoch milliseconds (`1764108285000`), a UTC date or date-time
/// (`2026-11-25`, `2026-11-25T22:04`, `2026-11-25T22:04:45Z`), or an age before `now`
/// (`90s`, `30m`, `2h`, `7d`).
pub fn parse(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let bad = || format!("{s:?} is not a time: use epoch milliseconds, 2026-11-25[T22:04[:45]][Z], or an age like 30m");
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Timestamp(ms));
    }
    if let Some(unit) = s.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
            let ms = match unit {
                's' => 1000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                _ => return Err(bad()),
            };
            return Ok(Timestamp(now.0.saturating_sub(n.saturating_mul(ms))));
        }
    }
    let s2 = s.trim_end_matches('Z');
    let (date, time) = s2.split_once(['T', ' ']).unwrap_or((s2, "00:00:00"));
    let mut dp = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(mo)), Some(Ok(d)), None) = (dp.next(), dp.next(), dp.next(), dp.next()) else {
        return Err(bad());
    };
    let mut tp = time.split(':').map(|p| p.parse::<i64>());
    let h = tp.next().ok_or_else(bad)?.map_err(|_| bad())?;
    let mi = tp.next().unwrap_or(Ok(0)).map_err(|_| bad())?;
    let se = tp.next().unwrap_or(Ok(0)).map_err(|_| bad())?;
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..60).contains(&se)
        || y < 1970
    {
        return Err(bad());
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Ok(Timestamp(((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_utc_times() {
        assert_eq!(format(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        let t = parse("2026-11-25T22:04:45Z", Timestamp(0)).unwrap();
        assert_eq!(format(t), "2026-11-25T22:04:45.000Z");
        assert_eq!(parse("2024-02-29", Timestamp(0)).map(format).unwrap(), "2024-02-29T00:00:00.000Z");
        assert_eq!(parse("1764108285123", Timestamp(0)).unwrap(), Timestamp(1_764_108_285_123));
        assert_eq!(parse("30m", Timestamp(10_000_000)).unwrap(), Timestamp(10_000_000 - 1_800_000));
        for bad in ["yesterday", "2026-13-01", "30x", "2026-11-25T25:00"] {
            assert!(parse(bad, Timestamp(0)).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_400), "12.4s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(7_800_000), "2h10m");
    }
}
