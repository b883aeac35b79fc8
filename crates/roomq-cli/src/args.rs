//! Parsers for the CLI's argument values: durations in milliseconds,
//! backoff lists, points in time, retention rules. Pure functions, tested
//! here.

use std::time::{Duration, SystemTime};

use roomq_client::proto as pb;

/// A duration whose bare number is milliseconds (`250`), or a number with
/// a unit: `250ms`, `30s`, `5m`, `2h`, `7d`.
pub fn parse_ms_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "ms"), |i| s.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500, 500ms, 30s, 5m, 2h, 7d)"))?;
    let secs = |k: u64| {
        n.checked_mul(k)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("{s:?}: use ms, s, m, h or d (a bare number is ms)")),
    }
}

/// A backoff list as one argument value (clap would take a bare
/// `Vec` for a repeatable flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff(pub Vec<Duration>);

/// A comma-separated list of durations, e.g. `100,1000,5000` or
/// `100ms,1s,5s`.
pub fn parse_backoff(s: &str) -> Result<Backoff, String> {
    let steps = s
        .split(',')
        .map(parse_ms_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if steps.iter().any(Duration::is_zero) {
        return Err(format!("{s:?}: every backoff step must be at least 1 ms"));
    }
    Ok(Backoff(steps))
}

/// A point in time: ms since the Unix epoch (`1700000000000`), or an RFC
/// 3339 date-time (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    let ms = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is too large for ms since the epoch"))?
    } else {
        rfc3339_ms(s).ok_or_else(|| {
            format!(
                "{s:?} is not a time: give ms since the Unix epoch or an RFC 3339 \
                 date-time such as 2024-05-01T12:00:00Z"
            )
        })?
    };
    Ok(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// ms since the Unix epoch of an RFC 3339 date-time at or after 1970.
fn rfc3339_ms(s: &str) -> Option<u64> {
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut parts = date.split('-');
    let year: i64 = digits(parts.next()?, 4)?.try_into().ok()?;
    let month = digits(parts.next()?, 2)?;
    let day = digits(parts.next()?, 2)?;
    if parts.next().is_some() {
        return None;
    }
    // The offset: Z, or +HH:MM / -HH:MM after the time.
    let (time, offset_minutes) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (time, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset.get(1..)?.split_once(':')?;
        let (h, m) = (digits(h, 2)?, digits(m, 2)?);
        if h > 23 || m > 59 {
            return None;
        }
        (time, sign * i64::try_from(h * 60 + m).ok()?)
    };
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (hms, f),
        Some(_) => return None,
        None => (time, ""),
    };
    let mut hms = hms.split(':');
    let hour = digits(hms.next()?, 2)?;
    let minute = digits(hms.next()?, 2)?;
    let second = digits(hms.next()?, 2)?;
    if hms.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Milliseconds: the first three digits of the fraction.
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second).ok()?
        - offset_minutes * 60;
    let ms = u64::try_from(seconds).ok()?.checked_mul(1000)?;
    ms.checked_add(millis)
}

/// Exactly `n` ASCII digits, as a number.
fn digits(s: &str, n: usize) -> Option<u64> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(year: i64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    // Months counted from March, so the leap day ends the year.
    let month_from_march = i64::try_from((month + 9) % 12).unwrap_or(0);
    let day = i64::try_from(day).unwrap_or(1);
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A retention rule, `PATTERN:MAX_MESSAGES:MAX_BYTES:MAX_AGE`: an empty
/// limit or 0 is no limit of that kind; the age is a duration (a bare
/// number is ms). The pattern may itself contain `:`.
pub fn parse_retention(s: &str) -> Result<pb::RetentionRule, String> {
    let mut fields = s.rsplitn(4, ':');
    let (Some(age), Some(bytes), Some(messages), Some(rooms)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(format!(
            "{s:?}: expected PATTERN:MAX_MESSAGES:MAX_BYTES:MAX_AGE_MS, e.g. 'orders.*:100000::7d'"
        ));
    };
    if rooms.is_empty() {
        return Err(format!(
            "{s:?}: the room pattern is empty (use * for every room)"
        ));
    }
    let number = |what: &str, v: &str| -> Result<u64, String> {
        if v.is_empty() {
            return Ok(0);
        }
        v.parse()
            .map_err(|_| format!("{s:?}: {what} {v:?} is not a number"))
    };
    let max_age_ms = if age.is_empty() {
        0
    } else {
        u64::try_from(parse_ms_duration(age)?.as_millis()).unwrap_or(u64::MAX)
    };
    Ok(pb::RetentionRule {
        rooms: rooms.to_string(),
        max_messages: number("MAX_MESSAGES", messages)?,
        max_bytes: number("MAX_BYTES", bytes)?,
        max_age_ms,
    })
}

/// A retention rule for people: `orders.*: 100000 messages, 7d`.
pub fn describe_retention(r: &pb::RetentionRule) -> String {
    let mut limits = Vec::new();
    if r.max_messages > 0 {
        limits.push(format!("{} messages", r.max_messages));
    }
    if r.max_bytes > 0 {
        limits.push(format!("{} bytes", r.max_bytes));
    }
    if r.max_age_ms > 0 {
        limits.push(describe_ms(r.max_age_ms));
    }
    if limits.is_empty() {
        limits.push("no limit".into());
    }
    format!("{}: {}", r.rooms, limits.join(", "))
}

/// An age in the largest unit that divides it exactly.
fn describe_ms(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// ms since the Unix epoch of `t` (0 before it).
#[cfg(test)]
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: SystemTime) -> u64 {
        epoch_ms(t)
    }

    #[test]
    fn durations_default_to_milliseconds() {
        assert_eq!(parse_ms_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_ms_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_ms_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ms_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_ms_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ms_duration("").is_err());
        assert!(parse_ms_duration("5 weeks").is_err());
        assert!(parse_ms_duration("-5").is_err());
        assert!(parse_ms_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn backoff_is_a_list_of_positive_durations() {
        assert_eq!(
            parse_backoff("100,1000,5000"),
            Ok(Backoff(vec![
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(5)
            ]))
        );
        assert_eq!(
            parse_backoff("100ms,2s"),
            Ok(Backoff(vec![
                Duration::from_millis(100),
                Duration::from_secs(2)
            ]))
        );
        assert!(parse_backoff("100,,5000").is_err());
        assert!(parse_backoff("0").is_err());
        assert!(parse_backoff("fast").is_err());
    }

    #[test]
    fn times_are_epoch_ms_or_rfc3339() {
        assert_eq!(parse_time("1700000000123").map(ms), Ok(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z").map(ms), Ok(0));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").map(ms),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z").map(ms),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("2023-11-15T00:13:20.123456+02:00").map(ms),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_time("2023-11-14 17:13:20-05:00").map(ms),
            Ok(1_700_000_000_000)
        );
        // A leap day, and the turn of a century that is a leap year.
        assert_eq!(
            parse_time("2024-02-29T00:00:00Z").map(ms),
            Ok(1_709_164_800_000)
        );
        assert_eq!(
            parse_time("2000-03-01T00:00:00Z").map(ms),
            Ok(951_868_800_000)
        );
        for bad in [
            "",
            "yesterday",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "1969-12-31T23:59:59Z",
            "23-11-14T22:13:20Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn retention_rules_parse_and_print() {
        let r = parse_retention("orders.*:100000::7d").unwrap();
        assert_eq!(
            r,
            pb::RetentionRule {
                rooms: "orders.*".into(),
                max_messages: 100_000,
                max_bytes: 0,
                max_age_ms: 604_800_000,
            }
        );
        assert_eq!(describe_retention(&r), "orders.*: 100000 messages, 7d");
        let r = parse_retention("a:b:*:0:1048576:3600000").unwrap();
        assert_eq!(r.rooms, "a:b:*", "the pattern may hold colons");
        assert_eq!(
            (r.max_messages, r.max_bytes, r.max_age_ms),
            (0, 1_048_576, 3_600_000)
        );
        assert_eq!(describe_retention(&r), "a:b:*: 1048576 bytes, 1h");
        assert_eq!(
            describe_retention(&parse_retention("*:::").unwrap()),
            "*: no limit"
        );
        assert_eq!(describe_ms(1500), "1500ms");
        assert!(parse_retention("orders.*:100").is_err());
        assert!(parse_retention(":1:2:3").is_err());
        assert!(parse_retention("x:many:0:0").is_err());
        assert!(parse_retention("x:1:0:forever").is_err());
    }
}
