//! Crash points, for tests of crash safety: built with the `crash-points` feature, a
//! process whose environment has `WM_CRASH_POINT` set to `POINT@EVENT` kills itself
//! with SIGKILL when it reaches point `POINT` while writing an event of kind `EVENT`
//! (`journal-committed@lock_recovered`), exactly as a `kill -9` landing there would.
//! Without the feature, a crash point compiles to nothing.

use crate::lifecycle::EventKind;

/// Dies here if `WM_CRASH_POINT` names this point and event kind (only with the
/// `crash-points` feature).
#[cfg(feature = "crash-points")]
pub(crate) fn crash_point(point: &str, kind: EventKind) {
    use std::sync::OnceLock;
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var("WM_CRASH_POINT").ok());
    if let Some((p, k)) = chosen.as_deref().and_then(|c| c.split_once('@')) {
        if p == point && k == kind.as_str() {
            crate::sys::kill_self();
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn crash_point(_point: &str, _kind: EventKind) {}
