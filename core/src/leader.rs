//! The node's leader as one 64-bit word, so that a worker asks "am I the leader?"
//! with a single atomic load, no lock and no system call (`docs/design.md` 4.9).
//!
//! The word holds the leader's slot plus one (0: no leader; 17 bits, as slots are
//! at most 65536), the cause of the last change (4 bits) and the term (43 bits,
//! which grows at every change). The slot is enough for a worker to recognise
//! itself: a slot belongs to one live worker (it holds the slot's mutex).

use crate::lifecycle::LeaderCause;

const SLOT_BITS: u32 = 17;
const CAUSE_BITS: u32 = 4;
const TERM_SHIFT: u32 = SLOT_BITS + CAUSE_BITS;

/// The leader word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderWord(pub u64);

impl LeaderWord {
    pub(crate) fn new(slot: Option<u32>, cause: LeaderCause, term: u64) -> LeaderWord {
        let slot = slot.map_or(0, |s| u64::from(s) + 1) & ((1 << SLOT_BITS) - 1);
        let cause = u64::from(cause.code()) & ((1 << CAUSE_BITS) - 1);
        LeaderWord(term << TERM_SHIFT | cause << SLOT_BITS | slot)
    }

    /// The leader's slot, `None` when there is no leader.
    pub fn slot(self) -> Option<u32> {
        match (self.0 & ((1 << SLOT_BITS) - 1)) as u32 {
            0 => None,
            s => Some(s - 1),
        }
    }

    /// Why the leadership last changed; `None` before any change (or for a code
    /// this build does not know).
    pub fn cause(self) -> Option<LeaderCause> {
        LeaderCause::from_code(((self.0 >> SLOT_BITS) & ((1 << CAUSE_BITS) - 1)) as u32)
    }

    /// Leadership changes so far: 0 before the first leader.
    pub fn term(self) -> u64 {
        self.0 >> TERM_SHIFT
    }

    /// Whether the worker in `slot` leads.
    pub fn is(self, slot: u32) -> bool {
        self.slot() == Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_keeps_its_slot_cause_and_term() {
        for (slot, cause, term) in [
            (None, LeaderCause::Exit, 7),
            (Some(0), LeaderCause::Start, 1),
            (Some(65535), LeaderCause::Hang, (1 << 43) - 1),
        ] {
            let w = LeaderWord::new(slot, cause, term);
            assert_eq!((w.slot(), w.cause(), w.term()), (slot, Some(cause), term));
            assert!(slot.map_or(true, |s| w.is(s) && !w.is(s + 1)));
        }
        assert_eq!(LeaderWord::default().slot(), None);
        assert_eq!(LeaderWord::default().cause(), None);
    }
}
