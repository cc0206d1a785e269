//! Human units in the configuration file: durations (`"5m"`, `"90s"`, `"6 months"`) and sizes
//! (`"2 GiB"`). Sans-I/O: strings in, values out. Owns the grammar; knows nothing of TOML keys.

use std::fmt;
use std::time::Duration;

/// A retention or scheduling period. Calendar units stay calendar units: "6 months" is six
/// calendar months (clamped to the end of a shorter month), not 180 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Whole calendar months (years are twelve months).
    Months(u32),
    /// A fixed duration (seconds, minutes, hours, days, weeks).
    Fixed(Duration),
}

impl Period {
    /// The fixed duration, or `None` for calendar periods.
    pub fn fixed(self) -> Option<Duration> {
        match self {
            Period::Fixed(duration) => Some(duration),
            Period::Months(_) => None,
        }
    }

    /// Adds this period to an instant, in UTC. Calendar months clamp to the end of a shorter
    /// month (31 January + 1 month = end of February). Saturates at the maximum representable
    /// instant rather than failing: a retention horizon past year 9999 is "forever".
    pub fn after(self, start: jiff::Timestamp) -> jiff::Timestamp {
        match self {
            Period::Fixed(duration) => {
                let span =
                    jiff::SignedDuration::try_from(duration).unwrap_or(jiff::SignedDuration::MAX);
                start.saturating_add(span).unwrap_or(jiff::Timestamp::MAX)
            }
            Period::Months(months) => {
                let zoned = start.to_zoned(jiff::tz::TimeZone::UTC);
                let later = jiff::Span::new()
                    .try_months(i64::from(months))
                    .and_then(|span| zoned.checked_add(span));
                match later {
                    Ok(later) => later.timestamp(),
                    Err(_) => jiff::Timestamp::MAX,
                }
            }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Months(n) if n % 12 == 0 => write!(f, "{} years", n / 12),
            Period::Months(n) => write!(f, "{n} months"),
            Period::Fixed(duration) => write!(f, "{}s", duration.as_secs()),
        }
    }
}

/// Why a unit string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` does not start with a whole number")]
    NoNumber(String),
    #[error("`{0}` is too large")]
    Overflow(String),
    #[error("`{0}` has no unit (expected one of {DURATION_UNITS})")]
    NoUnit(String),
    #[error("unknown unit `{unit}` (expected one of {expected})")]
    UnknownUnit {
        unit: String,
        expected: &'static str,
    },
}

const DURATION_UNITS: &str = "s, m (minutes), h, d, w, M or months, y or years";
const SIZE_UNITS: &str = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB";

/// Parses a period: `"90s"`, `"5m"`, `"24h"`, `"7 days"`, `"2 weeks"`, `"6 months"`, `"5 years"`.
/// Units are case-insensitive but for `m` and `M`, as in systemd's time spans: `"6m"` is six
/// minutes, `"6M"` six months.
pub fn parse_period(text: &str) -> Result<Period, UnitError> {
    let (number, unit) = split_number(text)?;
    if unit.is_empty() {
        return Err(UnitError::NoUnit(text.trim().to_owned()));
    }
    let written = unit;
    let unit = match unit {
        "M" => "months".to_owned(),
        other => other.to_ascii_lowercase(),
    };
    let seconds_per = match unit.as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        "month" | "months" => {
            let months = u32::try_from(number).map_err(|_| UnitError::Overflow(text.to_owned()))?;
            return Ok(Period::Months(months));
        }
        "y" | "year" | "years" => {
            let months = u32::try_from(number)
                .ok()
                .and_then(|years| years.checked_mul(12))
                .ok_or_else(|| UnitError::Overflow(text.to_owned()))?;
            return Ok(Period::Months(months));
        }
        _ => {
            return Err(UnitError::UnknownUnit {
                unit: written.to_owned(),
                expected: DURATION_UNITS,
            });
        }
    };
    let seconds = number
        .checked_mul(seconds_per)
        .ok_or_else(|| UnitError::Overflow(text.to_owned()))?;
    Ok(Period::Fixed(Duration::from_secs(seconds)))
}

/// Parses a fixed duration; calendar units are refused here (a timer cannot wait "a month").
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    match parse_period(text)? {
        Period::Fixed(duration) => Ok(duration),
        Period::Months(_) => Err(UnitError::UnknownUnit {
            unit: split_number(text)?.1.to_owned(),
            expected: "s, m, h, d, w (calendar units are not allowed here)",
        }),
    }
}

/// Parses a size: `"2 GiB"`, `"512 MB"`, `"1048576"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number(text)?;
    let multiplier: u64 = match unit {
        "" | "B" | "b" => 1,
        "KB" | "kB" | "kb" => 1_000,
        "MB" | "mb" => 1_000_000,
        "GB" | "gb" => 1_000_000_000,
        "TB" | "tb" => 1_000_000_000_000,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        _ => {
            return Err(UnitError::UnknownUnit {
                unit: unit.to_owned(),
                expected: SIZE_UNITS,
            });
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| UnitError::Overflow(text.to_owned()))
}

/// Splits `"  6 months "` into `(6, "months")`.
fn split_number(text: &str) -> Result<(u64, &str), UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return Err(UnitError::NoNumber(text.to_owned()));
    }
    let number: u64 = text[..digits_end]
        .parse()
        .map_err(|_| UnitError::Overflow(text.to_owned()))?;
    Ok((number, text[digits_end..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_period(input: &str, expected: Result<Period, UnitError>) {
        assert_eq!(parse_period(input), expected, "input {input:?}");
    }

    #[test]
    fn periods() {
        check_period("5m", Ok(Period::Fixed(Duration::from_secs(300))));
        check_period("90s", Ok(Period::Fixed(Duration::from_secs(90))));
        check_period("24h", Ok(Period::Fixed(Duration::from_secs(86_400))));
        check_period("6 months", Ok(Period::Months(6)));
        check_period("1 month", Ok(Period::Months(1)));
        check_period("5 years", Ok(Period::Months(60)));
        check_period("  7 days ", Ok(Period::Fixed(Duration::from_secs(604_800))));
        check_period("", Err(UnitError::Empty));
        check_period("months", Err(UnitError::NoNumber("months".into())));
        // systemd's spelling: M is a month, m a minute.
        check_period("6M", Ok(Period::Months(6)));
        check_period("6m", Ok(Period::Fixed(Duration::from_secs(360))));
        check_period("6 MONTHS", Ok(Period::Months(6)));
        check_period("0", Err(UnitError::NoUnit("0".into())));
        check_period(
            "5 fortnights",
            Err(UnitError::UnknownUnit {
                unit: "fortnights".into(),
                expected: DURATION_UNITS,
            }),
        );
        assert!(matches!(
            parse_period("99999999999999999999s"),
            Err(UnitError::Overflow(_))
        ));
        assert!(matches!(
            parse_period("18446744073709551615w"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn durations_refuse_calendar_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("6 months").is_err());
        assert!(parse_duration("5M").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert!(matches!(
            parse_size("2 GB/s"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999 TiB"),
            Err(UnitError::Overflow(_))
        ));
    }

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn calendar_months_clamp_to_month_end() {
        let six = Period::Months(6);
        let one = Period::Months(1);
        assert_eq!(
            one.after(ts("2026-01-31T10:00:00Z")),
            ts("2026-02-28T10:00:00Z")
        );
        assert_eq!(
            one.after(ts("2028-01-31T10:00:00Z")),
            ts("2028-02-29T10:00:00Z")
        );
        assert_eq!(
            six.after(ts("2026-08-31T23:59:59Z")),
            ts("2027-02-28T23:59:59Z")
        );
        assert_eq!(
            six.after(ts("2026-07-15T00:00:00Z")),
            ts("2027-01-15T00:00:00Z")
        );
        assert_eq!(
            Period::Months(12).after(ts("2028-02-29T12:00:00Z")),
            ts("2029-02-28T12:00:00Z")
        );
        assert_eq!(
            six.after(ts("2026-12-31T23:00:00Z")),
            ts("2027-06-30T23:00:00Z")
        );
        assert_eq!(
            Period::Months(1200000).after(ts("2026-12-31T23:00:00Z")),
            jiff::Timestamp::MAX
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,40}") {
            let _ = parse_period(&text);
            let _ = parse_size(&text);
        }

        #[test]
        fn months_after_is_monotonic_and_within_the_month(secs in 0i64..4_000_000_000, months in 0u32..120) {
            let start = jiff::Timestamp::from_second(secs).unwrap();
            let end = Period::Months(months).after(start);
            proptest::prop_assert!(end >= start);
            let s = start.to_zoned(jiff::tz::TimeZone::UTC);
            let e = end.to_zoned(jiff::tz::TimeZone::UTC);
            let month_index = |z: &jiff::Zoned| i64::from(z.year()) * 12 + i64::from(z.month());
            proptest::prop_assert_eq!(month_index(&e) - month_index(&s), i64::from(months));
            proptest::prop_assert!(e.day() <= s.day());
            proptest::prop_assert_eq!(e.time(), s.time());
        }
    }
}
