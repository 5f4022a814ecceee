//! Calendar arithmetic for the RTC: Unix time to a civil (proleptic Gregorian, UTC) date.

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// Month, 1-12.
    pub month: u8,
    /// Day of the month, 1-31.
    pub day: u8,
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute, 0-59.
    pub minute: u8,
    /// Second, 0-59.
    pub second: u8,
    /// Day of the week, 1 (Sunday) to 7 (Saturday), as the MC146818 counts.
    pub weekday: u8,
}

/// Converts seconds since 1970-01-01T00:00:00Z into a civil UTC time.
///
/// ```
/// use kvmkit_legacy::civil_from_unix;
/// let t = civil_from_unix(1_795_000_000); // 2026-11-18T11:06:40Z, a Wednesday
/// assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2026, 11, 18, 11, 6, 40));
/// assert_eq!(t.weekday, 4);
/// ```
pub fn civil_from_unix(secs: i64) -> CivilTime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm (public domain).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday (5 in 1 = Sunday counting).
    let weekday = ((days + 4).rem_euclid(7) + 1) as u8;
    CivilTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
        weekday,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let epoch = civil_from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        let leap = civil_from_unix(951_782_400); // 2000-02-29T00:00:00Z, a Tuesday
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2000, 2, 29, 3)
        );
        let end = civil_from_unix(4_102_444_799); // 2099-12-31T23:59:59Z
        assert_eq!(
            (
                end.year, end.month, end.day, end.hour, end.minute, end.second
            ),
            (2099, 12, 31, 23, 59, 59)
        );
        let before = civil_from_unix(-1);
        assert_eq!(
            (before.year, before.month, before.day, before.hour),
            (1969, 12, 31, 23)
        );
    }
}
