//! Times as tokenproxy stores and shows them: Unix milliseconds in records, RFC 3339
//! in words. Total for any stored value, so a damaged record cannot panic a reader.

use std::time::{Duration, SystemTime};

/// A time as Unix milliseconds (0 before 1970).
pub fn time_to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The last millisecond of the year 9999: RFC 3339 has four-digit years, and no
/// time tokenproxy handles is later (a stored `u64::MAX` reads as this).
const MAX_MS: u64 = 253_402_300_799_999;

/// A Unix time in milliseconds as a `SystemTime`; total, for any stored value.
pub fn ms_to_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.min(MAX_MS))
}

/// RFC 3339 in seconds, for any time (clamped to the years 1970..=9999).
pub fn rfc3339(t: SystemTime) -> String {
    let t = t.clamp(SystemTime::UNIX_EPOCH, ms_to_time(MAX_MS));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_stored_time_reads_and_prints() {
        for ms in [0, 1, MAX_MS, MAX_MS + 1, u64::MAX] {
            assert!(rfc3339(ms_to_time(ms)).len() >= 20);
        }
        assert_eq!(rfc3339(ms_to_time(u64::MAX)), "9999-12-31T23:59:59Z");
        assert_eq!(time_to_ms(ms_to_time(1_700_000_000_123)), 1_700_000_000_123);
    }
}
