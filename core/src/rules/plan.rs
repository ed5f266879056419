//! A plan: the effects of an operation, in the order they must reach the mapping.
//!
//! The rules build a plan over a copy of the [`State`]: each change is made to the
//! copy at once, so the next rule sees it, and recorded as a step with the record as
//! it was and as it becomes. `apply` then writes the steps in order. An event is
//! recorded before the effects that follow it (the crash-safe order of
//! `docs/design.md` 4.4) but counted as they leave the registry.

use std::time::{Duration, UNIX_EPOCH};

use crate::event::{Detail, Event};
use crate::lifecycle::{GenerationState, RunState, WorkerState};

use super::state::{Generation, History, Node, Slot, State};

/// When an operation runs: the monotonic clock (heartbeats, timeouts) and the wall
/// clock (what the registry shows), in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Now {
    pub mono: u64,
    pub real: u64,
}

/// One write to the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A journal entry.
    Journal(Event),
    Node {
        before: Node,
        after: Node,
    },
    Generation {
        before: Generation,
        after: Generation,
    },
    Slot {
        before: Slot,
        after: Slot,
    },
    History {
        before: History,
        after: History,
    },
}

/// The steps of an operation, and the state they lead to.
#[derive(Debug)]
pub(crate) struct Plan {
    state: State,
    steps: Vec<Step>,
    now: Now,
}

impl Plan {
    pub(crate) fn new(state: State, now: Now) -> Plan {
        Plan {
            state,
            steps: Vec::new(),
            now,
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn now(&self) -> Now {
        self.now
    }

    /// The events recorded so far.
    pub(crate) fn journalled(&self) -> impl Iterator<Item = &Event> {
        self.steps.iter().filter_map(|s| match s {
            Step::Journal(e) => Some(e),
            _ => None,
        })
    }

    /// The steps, and the state they lead to.
    pub(crate) fn into_parts(self) -> (State, Vec<Step>) {
        (self.state, self.steps)
    }

    /// Changes the header fields.
    pub(crate) fn node(&mut self, change: impl FnOnce(&mut Node)) {
        let before = self.state.node;
        change(&mut self.state.node);
        let after = self.state.node;
        if before != after {
            check(before.run, after.run, RunState::can_become);
            self.steps.push(Step::Node { before, after });
        }
    }

    /// Changes the generation record `record` (free or not).
    pub(crate) fn generation(&mut self, record: u32, change: impl FnOnce(&mut Generation)) {
        let before = self.state.record(record);
        let mut after = before;
        change(&mut after);
        if before != after {
            check(before.state, after.state, GenerationState::can_become);
            self.state.set_record(after);
            self.steps.push(Step::Generation { before, after });
        }
    }

    /// Changes the slot `slot`.
    pub(crate) fn slot(&mut self, slot: u32, change: impl FnOnce(&mut Slot)) {
        let Some(s) = self.state.slots.get_mut(slot as usize) else {
            debug_assert!(false, "slot {slot} was not decoded");
            return;
        };
        let before = *s;
        change(s);
        let after = *s;
        if before != after {
            check(before.state, after.state, WorkerState::can_become);
            self.steps.push(Step::Slot { before, after });
        }
    }

    /// Changes the crash history of worker index `index`; an index beyond the table
    /// (a worker index larger than the slot capacity) has none.
    pub(crate) fn history(&mut self, index: u32, change: impl FnOnce(&mut History)) {
        if index >= self.state.slot_capacity {
            return;
        }
        let before = self.state.history(index);
        let mut after = before;
        change(&mut after);
        if before != after {
            // Published before the record, so that readers stopping at the mark see it.
            self.node(|n| n.history_high_water = n.history_high_water.max(index + 1));
            self.state.set_history(after);
            self.steps.push(Step::History { before, after });
        }
    }

    /// Records an event about `generation`, then `effects`, the changes that follow
    /// it; the event's counts are those of the registry once they are done.
    pub(crate) fn event(
        &mut self,
        generation: u64,
        detail: Detail,
        effects: impl FnOnce(&mut Plan),
    ) -> Event {
        let at = self.steps.len();
        effects(self);
        let counts = self.state.census().counts_for(generation, &detail);
        let event = Event {
            seq: 0,
            time: UNIX_EPOCH + Duration::from_nanos(self.now.real),
            generation,
            counts,
            detail,
            redelivered: false,
        };
        self.steps.insert(at, Step::Journal(event));
        event
    }
}

/// A state change must be one of the enum's transitions; a code this build does not
/// know is never changed by a rule, so it is not checked here.
fn check<S: Copy + PartialEq + std::fmt::Debug>(
    before: Option<S>,
    after: Option<S>,
    legal: fn(S, S) -> bool,
) {
    if let (Some(from), Some(to)) = (before, after) {
        debug_assert!(
            from == to || legal(from, to),
            "illegal transition {from:?} -> {to:?}"
        );
    }
}

/// The run state a plan leaves, `None` for a code this build does not know.
pub(crate) fn run(node: &Node) -> RunState {
    node.run.unwrap_or(RunState::Running)
}
