//! Time as the registry stores it (`u64` nanoseconds and milliseconds) and as people
//! and other languages read it (seconds since the epoch): each conversion once, for
//! the core, the C ABI and the CLI.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use crate::sys::{monotonic, realtime};

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn monotonic_ns() -> u64 {
    nanos(monotonic())
}

pub(crate) fn realtime_ns() -> u64 {
    nanos(realtime())
}

/// `d` in whole milliseconds, saturating at `u64::MAX`: how the registry stores
/// intervals and the C ABI passes them.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `ms` milliseconds as a duration: the inverse of [`millis`].
pub fn from_millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `t` in nanoseconds since the Unix epoch, saturating; 0 for a time before it.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, nanos)
}

/// The time `ns` nanoseconds after the Unix epoch: the inverse of [`unix_nanos`].
pub fn from_unix_nanos(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// `t` in seconds since the Unix epoch, with its fraction (JSON, Lua, Prometheus);
/// 0 for a time before it.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_and_invert() {
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(
            from_millis(millis(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(unix_seconds(t), 1.5);
        assert_eq!(from_unix_nanos(unix_nanos(t)), t);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!((unix_nanos(before), unix_seconds(before)), (0, 0.0));
    }
}
