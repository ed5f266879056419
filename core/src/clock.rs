//! Time as the registry stores it: `u64` nanoseconds.

use std::time::Duration;

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

/// Milliseconds, saturating: how the registry stores a setting.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
