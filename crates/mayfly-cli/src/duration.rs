//! Durations as people write them: `90s`, `15m`, `1h30m`, `2d`, or plain seconds (`90`). Every
//! duration flag reads through here.

use std::time::Duration;

/// The longest duration taken: far beyond any TTL, and small enough that no conversion to
/// milliseconds overflows.
const MAX_SECONDS: u64 = 100 * 365 * 86_400;

/// A duration of zero or more.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let malformed =
        || format!("`{text}` is not a duration: write 90s, 15m, 1h30m, 2d or plain seconds");
    if trimmed.is_empty() {
        return Err(malformed());
    }
    let too_long = || format!("`{text}` is too long: at most 100 years");
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = trimmed.parse().map_err(|_| too_long())?;
        return checked(seconds).ok_or_else(too_long);
    }
    let mut total = 0u64;
    let mut number: Option<u64> = None;
    for c in trimmed.chars() {
        if let Some(digit) = c.to_digit(10) {
            let next = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(digit)))
                .ok_or_else(too_long)?;
            number = Some(next);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(malformed()),
        };
        let value = number.take().ok_or_else(malformed)?;
        total = value
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(too_long)?;
    }
    if number.is_some() {
        // `1h30`: a number without its unit after a unit.
        return Err(malformed());
    }
    checked(total).ok_or_else(too_long)
}

/// A duration of at least one second, for TTLs.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("`{text}` is zero: give a duration such as 15m"));
    }
    Ok(duration)
}

fn checked(seconds: u64) -> Option<Duration> {
    (seconds <= MAX_SECONDS).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expect: Result<u64, &str>) {
        let got = parse_duration(text).map(|d| d.as_secs());
        match (got, expect) {
            (Ok(got), Ok(expect)) => assert_eq!(got, expect, "{text}"),
            (Err(got), Err(expect)) => assert!(got.contains(expect), "{text}: {got}"),
            (got, expect) => panic!("{text}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        check("90s", Ok(90));
        check("15m", Ok(900));
        check("1h", Ok(3600));
        check("1h30m", Ok(5400));
        check("1h30m15s", Ok(5415));
        check("2d", Ok(172_800));
        check("90", Ok(90));
        check(" 15m ", Ok(900));
        check("0", Ok(0));
        check("0s", Ok(0));
        check("100000d", Err("too long"));
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "", "m", "15x", "1.5h", "h1", "1h30", "-5m", "15 m", "1H", "ten",
        ] {
            check(text, Err("is not a duration"));
        }
    }

    #[test]
    fn overflow_is_refused_clearly() {
        check("18446744073709551616", Err("too long"));
        check("18446744073709551615s", Err("too long"));
        check("18446744073709551615", Err("too long"));
        check("99999999999999999999999h", Err("too long"));
        check("307445734561825861m", Err("too long"));
        check("5124095576030432h", Err("too long"));
        check(&format!("{}s", MAX_SECONDS), Ok(MAX_SECONDS));
        check(&format!("{}", MAX_SECONDS + 1), Err("too long"));
        check(&format!("{}s1s", MAX_SECONDS), Err("too long"));
    }

    #[test]
    fn a_ttl_is_more_than_zero() {
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_ttl("0").unwrap_err().contains("zero"));
        assert!(parse_ttl("0m").unwrap_err().contains("zero"));
        assert!(parse_ttl("x").unwrap_err().contains("not a duration"));
    }
}
