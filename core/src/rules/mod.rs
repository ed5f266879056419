//! The lifecycle rules, as pure functions (`docs/design.md` section 4).
//!
//! A rule reads a decoded [`State`], the probes' results (which slot mutexes were
//! found abandoned, whether a process is alive) and the time, and adds its effects
//! to a [`Plan`]: events, and changes to the node, the generation records and the
//! slots. Nothing here touches the mapping, a process or a clock: `registry` takes
//! the lock, decodes, probes, runs a rule and has `apply` write the plan, in order.
//! So the rules are tested on plain values (`model_tests`), and every state change
//! goes through [`Plan`], which checks it against the enum's transitions.

pub(crate) mod plan;
pub(crate) mod state;

#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(test)]
mod model_tests;

use std::path::Path;
use std::time::Duration;

use crate::clock;
use crate::error::{Error, Result};
use crate::event::{Detail, Event, WorkerId};
use crate::leader::LeaderWord;
use crate::lifecycle::{
    AbortCause, Detection, ExitReason, GenerationState, LeaderCause, LockOp, RunEnd, RunState,
    StartKind, WorkerState,
};
use crate::process::Identity;
use crate::region::layout::{CRASH_TIMES, LEADER_CAUSES};
use crate::snapshot::{VERDICT_COMMITTED, VERDICT_FAILED};

pub(crate) use plan::{Now, Plan, Step};
pub(crate) use state::{Generation, History, Node, Slot, State};

use state::run_end;

/// How long a generation that has no worker yet may wait once a newer generation
/// registered (nginx: a reload that failed after `init_by_lua`, then another reload).
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(5);

/// What the rules ask about processes: `/proc` and `kill(pid, 0)` answer in the
/// registry, a model answers in tests.
pub(crate) trait Processes {
    /// Whether this very process is alive (its pid exists and started when `who`
    /// says).
    fn alive(&self, who: Identity) -> bool;
    /// The identity of a live process.
    fn identity(&self, pid: u32) -> Option<Identity>;
}

/// The process calling an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    pub me: Identity,
    /// Its parent's pid.
    pub parent: u32,
}

/// What a sweep learnt of a present slot from its mutex: held by its live process
/// (`None`), or free although the slot is in use (the process is gone).
pub(crate) type SlotProbe = (u32, Option<Detection>);

/// Settings of a generation as its record stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub interval_ms: u64,
    pub failed_ms: u64,
    pub start_timeout_ms: u64,
    pub expected_workers: u32,
    /// The crash-loop rule, node-wide: the newest configuration's applies.
    pub crash_loop: CrashLoopRule,
}

/// A worker index is in a crash loop when it crashed more than `intensity` times
/// within `period_ms` (Erlang/OTP's restart intensity and period), and out of it
/// once it has not crashed for `period_ms`. An intensity of 0 turns the rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CrashLoopRule {
    pub intensity: u32,
    pub period_ms: u64,
}

// ----- reading ------------------------------------------------------------------

/// What replaces `g`: the newest newer generation that the server committed. A
/// reload is committed before its workers are forked (its master closes the previous
/// configuration), so however slowly they start, the old workers see it; a
/// configuration that failed, or is still loading, replaces nothing.
fn successor<'s>(state: &'s State, g: &Generation) -> Option<&'s Generation> {
    state
        .records()
        .filter(|s| s.id > g.id && s.committed())
        .max_by_key(|s| s.id)
}

/// Why `g`'s workers go, judging by what replaces it.
fn successor_reason(state: &State, g: &Generation) -> ExitReason {
    match successor(state, g) {
        Some(s) if s.master.pid == g.master.pid => ExitReason::Reload,
        Some(_) => ExitReason::Upgrade,
        None => ExitReason::Stop,
    }
}

fn record_of(state: &State, id: u64) -> Option<u32> {
    state.generation(id).map(|g| g.record)
}

fn generation_at(plan: &Plan, record: u32) -> Generation {
    plan.state().record(record)
}

// ----- effects shared by several rules -----------------------------------------------

/// nginx's pre-daemon process registers the generation and exits; the real master
/// is the parent of its workers. Once the recorded master is gone, `parent`, a
/// worker's parent, becomes the generation's master.
fn adopt_master(plan: &mut Plan, record: u32, parent: u32, procs: &dyn Processes) {
    let g = generation_at(plan, record);
    if parent != g.master.pid && !procs.alive(g.master) {
        if let Some(master) = procs.identity(parent) {
            plan.generation(record, |g| g.master = master);
        }
    }
}

/// Frees a generation record and the tombstones of its dead workers.
fn retire(plan: &mut Plan, record: u32) {
    let id = generation_at(plan, record).id;
    let tombstones: Vec<u32> = plan
        .state()
        .slots
        .iter()
        .filter(|s| s.generation == id && s.is(WorkerState::Dead))
        .map(|s| s.slot)
        .collect();
    for slot in tombstones {
        plan.slot(slot, |s| s.state = Some(WorkerState::Free));
    }
    plan.generation(record, |g| {
        g.state = Some(GenerationState::Free);
        g.id = 0;
    });
}

/// The generation has no live worker left: `master_exit`.
fn master_exit(plan: &mut Plan, record: u32, clean: bool) {
    let g = generation_at(plan, record);
    let reason = g
        .exit_reason()
        .unwrap_or_else(|| successor_reason(plan.state(), &g));
    plan.event(g.id, Detail::MasterExit { reason }, |plan| {
        end_generation(plan, record, reason, clean)
    });
}

/// What follows a `master_exit` entry: the generation ends, and so does the node run
/// if nothing is left of it.
fn end_generation(plan: &mut Plan, record: u32, reason: ExitReason, clean: bool) {
    let now = plan.now().real;
    plan.generation(record, |g| {
        g.exit_reason = reason.code();
        g.state = Some(GenerationState::Exited);
        g.exited_ns = now;
    });
    retire_unless_newest(plan, record);
    end_run_if_idle(plan, clean);
}

/// An ended generation stays only while it is the newest committed one.
fn retire_unless_newest(plan: &mut Plan, record: u32) {
    if generation_at(plan, record).id != plan.state().census().newest() {
        retire(plan, record);
    }
}

/// Ends the node run if nothing is left of it: no live worker, no configuration
/// loading.
fn end_run_if_idle(plan: &mut Plan, clean: bool) {
    let census = plan.state().census();
    let anything_left = plan
        .state()
        .records()
        .any(|g| g.is(GenerationState::Starting) || census.live(g.id) > 0);
    // (A run never begun has nothing to end: only a damaged file has generations
    // then.)
    if !anything_left && plan.state().node.run != Some(RunState::Never) {
        plan.node(|n| n.run = Some(RunState::Ended(run_end(clean))));
    }
}

/// [`end_run_if_idle`] for a repair: a run that ended already keeps its end.
fn end_unfinished_run(plan: &mut Plan, clean: bool) {
    if plan::run(&plan.state().node) == RunState::Running {
        end_run_if_idle(plan, clean);
    }
}

/// A worker of the generation at `record` left: `master_exit` if it was the last.
fn end_if_last(plan: &mut Plan, record: u32, clean: bool) {
    let g = generation_at(plan, record);
    if g.has_workers_to_end() && plan.state().census().present(g.id) == 0 {
        master_exit(plan, record, clean);
    }
}

/// Records nginx's verdict on the configuration of generation `id`.
fn verdict(plan: &mut Plan, id: u64, committed: bool) {
    let now = plan.now().real;
    let reload = plan.state().generation(id).is_some_and(|g| {
        matches!(
            StartKind::from_code(g.kind),
            Some(StartKind::Reload | StartKind::Upgrade)
        )
    });
    plan.node(|n| {
        if reload {
            n.reload_verdicts = n.reload_verdicts.saturating_add(1);
            if !committed {
                n.reload_failures = n.reload_failures.saturating_add(1);
            }
        }
        if committed {
            n.last_success_ns = now;
        }
        n.verdict_generation = id;
        n.verdict = if committed {
            VERDICT_COMMITTED
        } else {
            VERDICT_FAILED
        };
        n.verdict_ns = now;
    });
}

/// The server committed the configuration at `record`: it serves, and replaces the
/// older generations.
fn commit(plan: &mut Plan, record: u32) {
    let g = generation_at(plan, record);
    if !g.committed() {
        let now = plan.now().real;
        plan.generation(record, |g| g.committed_ns = now);
        verdict(plan, g.id, true);
    }
}

fn abort(plan: &mut Plan, record: u32, cause: AbortCause) {
    let id = generation_at(plan, record).id;
    verdict(plan, id, false);
    plan.event(id, Detail::GenerationAbort { cause }, |plan| {
        withdraw(plan, record)
    });
}

/// What follows a `generation_abort` entry: the generation is retired, and a run that
/// a failed start began ends, having nothing in it.
fn withdraw(plan: &mut Plan, record: u32) {
    retire(plan, record);
    end_run_if_idle(plan, true);
}

/// What follows a `worker_hang` or `worker_recover` entry.
fn set_hung(plan: &mut Plan, slot: u32, hung: bool) {
    let now = plan.now().mono;
    plan.slot(slot, |s| {
        if hung {
            s.hung_since_mono_ns = now;
        }
        s.hung = hung;
    });
}

/// Fires `worker_exit` for a Running worker (which it counts) and drains its
/// generation.
fn report_exit(plan: &mut Plan, worker: WorkerId, record: u32, graceful: bool) {
    let reason = if graceful {
        successor_reason(plan.state(), &generation_at(plan, record))
    } else {
        ExitReason::FastStop
    };
    plan.generation(record, |g| {
        if g.exit_reason == 0 {
            g.exit_reason = reason.code();
        }
        if g.is(GenerationState::Running) {
            g.state = Some(GenerationState::Draining);
        }
    });
    plan.event(
        worker.generation,
        Detail::WorkerExit { worker, reason },
        |_| {},
    );
}

// ----- the sweep --------------------------------------------------------------------

/// Reports each death once, ends generations left without workers, aborts
/// generations that never got one, and ages heartbeats. `slots` says which present
/// slots' processes are gone; `dead_holder` is the pid of a lock holder that died
/// (0 if none); `me` the sweeping process.
pub(crate) fn sweep(
    plan: &mut Plan,
    slots: &[SlotProbe],
    dead_holder: u32,
    me: u32,
    procs: &dyn Processes,
) {
    for &(i, gone) in slots {
        // Read in place: a sweep looks at every live worker, most of them quiet.
        let Some(slot) = plan.state().slots.get(i as usize).filter(|s| s.present()) else {
            continue;
        };
        let (worker, exiting) = (slot.worker(), slot.is(WorkerState::Exiting));
        match gone {
            None => {
                if let Some(detail) = heartbeat_news(plan, i) {
                    let hung = matches!(detail, Detail::WorkerHang { .. });
                    plan.event(worker.generation, detail, |plan| set_hung(plan, i, hung));
                }
            }
            // It announced its exit and is now gone, as announced.
            Some(_) if exiting => plan.slot(i, |s| s.state = Some(WorkerState::Free)),
            Some(detection) => {
                let detail = Detail::WorkerCrash {
                    worker,
                    detection,
                    held_lock: dead_holder != 0 && worker.pid == dead_holder,
                    detected_by: me,
                };
                plan.event(worker.generation, detail, |plan| bury(plan, i, worker));
            }
        }
    }
    end_deserted(plan, procs);
    abort_stalled(plan);
    crash_loops(plan);
}

/// What follows a `worker_crash` entry: the crash joins its index's history, then
/// the slot becomes a tombstone.
fn bury(plan: &mut Plan, slot: u32, worker: WorkerId) {
    let now = plan.now().mono;
    plan.history(worker.index, |h| {
        // Redone by a repair: counted already.
        if h.crashes != 0 && h.last_worker() == worker {
            return;
        }
        h.times[(h.crashes % CRASH_TIMES as u64) as usize] = now;
        h.crashes = h.crashes.saturating_add(1);
        h.last_pid = worker.pid;
        h.last_generation = worker.generation;
    });
    plan.slot(slot, |s| s.state = Some(WorkerState::Dead));
}

/// Reports the indexes that enter a crash loop (`worker_crash_loop`) and those that
/// leave one (`worker_crash_loop_end`), by the newest configuration's rule.
fn crash_loops(plan: &mut Plan) {
    let node = plan.state().node;
    let period_ns = node.crash_loop_period_ms.saturating_mul(1_000_000);
    let now = plan.now();
    let mut news = Vec::new();
    for h in &plan.state().histories {
        let (recent, newest) = h.recent(now.mono, period_ns);
        let worker = h.last_worker();
        if !h.looping && node.crash_loop_intensity != 0 && recent > node.crash_loop_intensity {
            news.push((
                worker,
                Detail::WorkerCrashLoop {
                    worker,
                    crashes: recent,
                    period: Duration::from_millis(node.crash_loop_period_ms),
                },
            ));
        } else if h.looping
            && (node.crash_loop_intensity == 0 || newest.map_or(true, |t| now.mono - t > period_ns))
        {
            news.push((
                worker,
                Detail::WorkerCrashLoopEnd {
                    worker,
                    lasted: Duration::from_nanos(now.real.saturating_sub(h.loop_since_ns)),
                },
            ));
        }
    }
    for (worker, detail) in news {
        let looping = matches!(detail, Detail::WorkerCrashLoop { .. });
        plan.event(worker.generation, detail, |plan| {
            set_looping(plan, worker.index, looping)
        });
    }
}

/// What follows a `worker_crash_loop` or `worker_crash_loop_end` entry.
fn set_looping(plan: &mut Plan, index: u32, looping: bool) {
    let now = plan.now().real;
    plan.history(index, |h| {
        if looping && !h.looping {
            h.loop_since_ns = now;
        }
        h.looping = looping;
    });
}

/// What the heartbeat of the live worker in `slot` says: it went silent past its
/// generation's limit (`worker_hang`), or beats again after that (`worker_recover`).
fn heartbeat_news(plan: &Plan, slot: u32) -> Option<Detail> {
    let state = plan.state();
    let slot = &state.slots[slot as usize];
    let worker = slot.worker();
    let g = state.generation(worker.generation)?;
    // Saturating: a file may hold any numbers.
    let limit = g
        .interval_ms
        .saturating_add(g.failed_ms)
        .saturating_mul(1_000_000);
    let now = plan.now().mono;
    let silent = now.saturating_sub(slot.heartbeat_mono_ns);
    if !slot.hung && silent > limit {
        Some(Detail::WorkerHang {
            worker,
            silent_for: Duration::from_nanos(silent),
        })
    } else if slot.hung && silent <= limit {
        Some(Detail::WorkerRecover {
            worker,
            hung_for: Duration::from_nanos(now.saturating_sub(slot.hung_since_mono_ns)),
        })
    } else {
        None
    }
}

/// A generation whose workers all died gets its `master_exit` once nothing will
/// respawn them: it was draining, a newer generation replaced it, or its master is
/// gone. Otherwise its master is expected to respawn them.
fn end_deserted(plan: &mut Plan, procs: &dyn Processes) {
    let state = plan.state();
    let census = state.census();
    let newest = census.newest();
    let deserted: Vec<u32> = state
        .records()
        .filter(|g| {
            census.present(g.id) == 0
                && match g.state {
                    Some(GenerationState::Draining) => true,
                    Some(GenerationState::Running) => g.id != newest || !procs.alive(g.master),
                    _ => false,
                }
        })
        .map(|g| g.record)
        .collect();
    for record in deserted {
        // Unclean if its last workers died: their tombstones are still there.
        let id = generation_at(plan, record).id;
        let clean = !plan
            .state()
            .slots
            .iter()
            .any(|s| s.generation == id && s.is(WorkerState::Dead));
        master_exit(plan, record, clean);
    }
}

/// Generations still waiting for their first worker: after a newer generation
/// registered, they get [`SUPERSEDED_GRACE`] (or their start timeout, if shorter),
/// since two reloads in a row do start the first one's workers; else their start
/// timeout. (A dead registrant proves nothing: nginx's pre-daemon process registers
/// the generation and exits before the master forks workers.)
fn abort_stalled(plan: &mut Plan) {
    let now = plan.now().mono;
    let state = plan.state();
    let stalled: Vec<(u32, AbortCause)> = state
        .records()
        .filter(|g| g.is(GenerationState::Starting) && !g.committed())
        .filter_map(|g| {
            let timeout = g.start_timeout_ms.saturating_mul(1_000_000);
            let grace = timeout.min(clock::nanos(SUPERSEDED_GRACE));
            let superseded = state
                .records()
                .any(|n| n.id > g.id && now.saturating_sub(n.registered_mono_ns) > grace);
            let waited = now.saturating_sub(g.registered_mono_ns);
            if superseded {
                Some((g.record, AbortCause::Superseded))
            } else if waited > timeout {
                Some((g.record, AbortCause::TimedOut))
            } else {
                None
            }
        })
        .collect();
    for (record, cause) in stalled {
        abort(plan, record, cause);
    }
}

// ----- the operations ---------------------------------------------------------------

/// Registers a new generation whose master is the caller: a start, restart, reload
/// or binary upgrade, decided from what the registry holds (`docs/design.md` 4.3).
/// Returns its id. `path` only names the registry in an error.
pub(crate) fn register_generation(
    plan: &mut Plan,
    settings: Settings,
    caller: Caller,
    path: &Path,
    procs: &dyn Processes,
) -> Result<u64> {
    let me = caller.me;
    // The pre-daemon process may still have been alive when the workers registered:
    // judge each master by what its workers know.
    let parents: Vec<(u32, u32)> = plan
        .state()
        .present_slots()
        .filter_map(|s| Some((record_of(plan.state(), s.generation)?, s.ppid)))
        .collect();
    for (record, parent) in parents {
        adopt_master(plan, record, parent, procs);
    }
    let state = plan.state();
    let active = state
        .records()
        .filter(|g| !g.is(GenerationState::Exited))
        .max_by_key(|g| g.id);
    // A master that still has a generation reloads, even when another master's
    // generation is newer (an upgrade in progress).
    let mine = state
        .records()
        .any(|g| !g.is(GenerationState::Exited) && g.master.pid == me.pid);
    let (kind, previous_run) = match active {
        Some(_) if mine => (StartKind::Reload, None),
        Some(a) if procs.alive(a.master) => {
            if caller.parent != a.master.pid {
                return Err(Error::InUse {
                    path: path.to_path_buf(),
                    master_pid: a.master.pid,
                });
            }
            (StartKind::Upgrade, None)
        }
        Some(_) => (StartKind::Restart, Some(RunEnd::Unclean)),
        None => match plan::run(&state.node) {
            RunState::Never => (StartKind::Start, None),
            RunState::Ended(end) => (StartKind::Restart, Some(end)),
            RunState::Running => (StartKind::Restart, Some(RunEnd::Unclean)),
        },
    };
    // Ended generations stop being the newest, which may free a record.
    let ended: Vec<u32> = state
        .records()
        .filter(|g| g.is(GenerationState::Exited))
        .map(|g| g.record)
        .collect();
    if state.free.is_empty() && ended.is_empty() {
        return Err(Error::CapacityExhausted {
            what: "generation",
            capacity: state.generations.len() as u32,
        });
    }
    for record in ended {
        retire(plan, record);
    }
    let Some(&record) = plan.state().free.first() else {
        unreachable!("a record is free, or was just freed");
    };
    if matches!(kind, StartKind::Start | StartKind::Restart) {
        plan.node(|n| {
            n.run_id = n.run_id.wrapping_add(1);
            n.run = Some(RunState::Running);
        });
    }
    let id = plan.state().node.next_generation.max(1);
    let now = plan.now();
    plan.generation(record, |g| {
        *g = Generation {
            record: g.record,
            id,
            state: Some(GenerationState::Starting),
            kind: kind.code(),
            master: me,
            expected_workers: settings.expected_workers,
            registered_ns: now.real,
            registered_mono_ns: now.mono,
            interval_ms: settings.interval_ms,
            failed_ms: settings.failed_ms,
            start_timeout_ms: settings.start_timeout_ms,
            workers_started: 0,
            respawns: 0,
            crashes: 0,
            exit_reason: 0,
            previous_run: previous_run.map_or(0, RunEnd::code),
            exited_ns: 0,
            committed_ns: 0,
        };
    });
    plan.node(|n| {
        n.next_generation = id.saturating_add(1);
        n.crash_loop_intensity = settings.crash_loop.intensity;
        n.crash_loop_period_ms = settings.crash_loop.period_ms;
    });
    let detail = Detail::MasterStart {
        kind,
        previous_run,
        master_pid: me.pid,
    };
    plan.event(id, detail, |_| {});
    // Generations whose workers all died and that this one now replaces.
    end_deserted(plan, procs);
    Ok(id)
}

/// Where worker `index` of `generation` may go, in order of preference: the
/// tombstone of the same generation and index (a respawn), free slots, then other
/// tombstones. The caller takes the first whose mutex it can lock.
pub(crate) fn worker_slots(
    state: &State,
    generation: u64,
    index: u32,
    me: u32,
) -> Result<Vec<u32>> {
    if let Some(slot) = state.present_slots().find(|s| s.pid == me) {
        return Err(Error::InvalidArgument {
            name: "worker",
            reason: format!(
                "this process is already registered as worker {}",
                slot.worker()
            ),
        });
    }
    if state.generation(generation).is_none() {
        return Err(Error::UnknownGeneration(generation));
    }
    let tombstone = tombstone(state, generation, index);
    let of = |wanted: WorkerState| {
        state
            .slots
            .iter()
            .filter(move |s| s.is(wanted))
            .map(|s| s.slot)
    };
    Ok(tombstone
        .into_iter()
        .chain(of(WorkerState::Free))
        .chain(of(WorkerState::Dead))
        .collect())
}

fn tombstone(state: &State, generation: u64, index: u32) -> Option<u32> {
    state
        .slots
        .iter()
        .find(|s| s.is(WorkerState::Dead) && s.generation == generation && s.index == index)
        .map(|s| s.slot)
}

/// Registers the caller as worker `index` of `generation` in `slot`, one of
/// [`worker_slots`], whose mutex the caller now holds.
pub(crate) fn register_worker(
    plan: &mut Plan,
    generation: u64,
    index: u32,
    slot: u32,
    caller: Caller,
    procs: &dyn Processes,
) -> Result<WorkerId> {
    let state = plan.state();
    let record = record_of(state, generation).ok_or(Error::UnknownGeneration(generation))?;
    let previous = state.slots[slot as usize];
    let replaces = (tombstone(state, generation, index) == Some(slot)).then(|| previous.worker());
    let me = caller.me;
    let now = plan.now();
    plan.slot(slot, |s| {
        *s = Slot {
            slot,
            state: Some(WorkerState::Running),
            pid: me.pid,
            generation,
            index,
            hung: false,
            start_time: me.start_time,
            registered_ns: now.real,
            heartbeat_mono_ns: now.mono,
            hung_since_mono_ns: 0,
            replaced_pid: replaces.map_or(0, |w| w.pid),
            ppid: caller.parent,
            // The tombstone's own count, while the slot still holds it.
            respawns: replaces.map_or(0, |_| previous.respawns.saturating_add(1)),
            leaving: false,
        };
    });
    plan.node(|n| n.slot_high_water = n.slot_high_water.max(slot + 1));
    // (A master that registers as its own worker is nginx's single-process mode.)
    if me.pid != generation_at(plan, record).master.pid {
        adopt_master(plan, record, caller.parent, procs);
    }
    // A worker runs the configuration: the server committed it (an upgrade's or a
    // first start's only sign; a reload's master said so already). Before the
    // generation turns Running: a running generation not committed, whose only
    // worker died here, would be taken for one that nothing replaces and ended,
    // and its respawn refused.
    commit(plan, record);
    plan.generation(record, |g| {
        g.workers_started = g.workers_started.saturating_add(1);
        if replaces.is_some() {
            g.respawns = g.respawns.saturating_add(1);
        }
        if g.is(GenerationState::Starting) || g.is(GenerationState::Exited) {
            g.state = Some(GenerationState::Running);
        }
    });
    let worker = WorkerId {
        generation,
        pid: me.pid,
        index,
    };
    plan.event(generation, Detail::WorkerStart { worker, replaces }, |_| {});
    Ok(worker)
}

/// The slot of the caller's worker, checked: it must still hold `worker`, Running or
/// Exiting.
fn own_slot(state: &State, slot: u32, worker: WorkerId) -> Result<Slot> {
    state
        .slots
        .get(slot as usize)
        .copied()
        .filter(|s| s.present() && s.worker() == worker)
        .ok_or_else(|| Error::NotRegistered(worker.to_string()))
}

/// Whether the worker in `slot` may exit: its slot still holds it, and its
/// generation is known unless it announced its exit (the generation may have ended
/// and been retired since: then only the slot is left to free).
pub(crate) fn may_exit(state: &State, slot: u32, worker: WorkerId) -> Result<()> {
    let own = own_slot(state, slot, worker)?;
    if state.generation(worker.generation).is_none() && !own.is(WorkerState::Exiting) {
        return Err(Error::UnknownGeneration(worker.generation));
    }
    Ok(())
}

/// The worker in `slot` exits: `graceful` for a graceful shutdown, `false` for a fast
/// stop. `worker_exit` (unless announced), then `master_exit` if it was the last of
/// its generation. The caller releases the slot's mutex.
pub(crate) fn exit_worker(
    plan: &mut Plan,
    slot: u32,
    worker: WorkerId,
    graceful: bool,
    procs: &dyn Processes,
) -> Result<()> {
    may_exit(plan.state(), slot, worker)?;
    let announced = plan.state().slots[slot as usize].is(WorkerState::Exiting);
    let record = record_of(plan.state(), worker.generation);
    if let (Some(record), false) = (record, announced) {
        report_exit(plan, worker, record, graceful);
    }
    plan.slot(slot, |s| s.state = Some(WorkerState::Free));
    if let Some(record) = record {
        // Its master outlives its workers unless it was killed (the workers then run
        // on as orphans): then the run did not end cleanly.
        let master = generation_at(plan, record).master;
        end_if_last(plan, record, procs.alive(master));
    }
    Ok(())
}

/// The worker in `slot` has begun a graceful shutdown but its process goes on:
/// `worker_exit` now, and `master_exit` too if the node is stopping and it was the
/// last to announce (`docs/design.md` 4.3).
pub(crate) fn announce_exit(plan: &mut Plan, slot: u32, worker: WorkerId) -> Result<()> {
    let own = own_slot(plan.state(), slot, worker)?;
    let record = record_of(plan.state(), worker.generation)
        .ok_or(Error::UnknownGeneration(worker.generation))?;
    if !own.is(WorkerState::Running) {
        return Ok(());
    }
    report_exit(plan, worker, record, true);
    plan.slot(slot, |s| s.state = Some(WorkerState::Exiting));
    let state = plan.state();
    let g = generation_at(plan, record);
    if g.has_workers_to_end()
        && state.census().live(worker.generation) == 0
        && successor_reason(state, &g) == ExitReason::Stop
    {
        master_exit(plan, record, true);
    }
    Ok(())
}

/// The caller closed the configuration of `generation` (`docs/design.md` 4.6): a
/// reload's commit when a newer configuration of the same master is loading; the
/// failure of an uncommitted one that it registered; otherwise nothing.
pub(crate) fn configuration_closed(plan: &mut Plan, generation: u64, me: u32) {
    let state = plan.state();
    let Some(g) = state.generation(generation).copied() else {
        return;
    };
    let loading = state
        .records()
        .filter(|n| {
            n.id > generation
                && n.master.pid == me
                && !n.committed()
                && n.is(GenerationState::Starting)
        })
        .max_by_key(|n| n.id)
        .map(|n| n.record);
    if let Some(next) = loading {
        // A reload: nginx closes the previous configuration once it has committed
        // the next. The previous one served, even if none of its workers had
        // registered yet.
        commit(plan, g.record);
        commit(plan, next);
    } else if !g.committed() && g.master.pid == me && g.is(GenerationState::Starting) {
        // Only the process that registered it can have given it up: a cache
        // manager, which closes its copy of the VM as it starts, knows nothing of it.
        abort(plan, g.record, AbortCause::Failed);
    }
}

/// The master committed the configuration of `generation`.
pub(crate) fn commit_generation(plan: &mut Plan, generation: u64) -> Result<()> {
    let record = record_of(plan.state(), generation).ok_or(Error::UnknownGeneration(generation))?;
    commit(plan, record);
    Ok(())
}

/// The worker in `slot` began its graceful exit, its process going on (nginx: its
/// pending timers run early): it will not be elected, and if it leads, the
/// leadership moves at the end of the operation (see [`lead`]).
pub(crate) fn resign(plan: &mut Plan, slot: u32, worker: WorkerId) -> Result<()> {
    own_slot(plan.state(), slot, worker)?;
    plan.slot(slot, |s| s.leaving = true);
    Ok(())
}

// ----- leadership -------------------------------------------------------------------

/// Whether the worker in `s` may lead: running, beating, not leaving.
fn may_lead(s: &Slot) -> bool {
    s.is(WorkerState::Running) && !s.hung && !s.leaving
}

/// Keeps the node's leader while it may lead; otherwise elects the next one, in the
/// same operation (`docs/design.md` 4.9): a worker of the newest committed
/// generation if there is one, of the same index as the previous leader if it can
/// (a respawn takes over its dead predecessor's leadership in its own
/// registration), else the lowest index. Run at the end of every operation.
pub(crate) fn lead(plan: &mut Plan) {
    let state = plan.state();
    let node = state.node;
    let held = node.leader.slot();
    // The slot still held by the leader's process.
    let current = held
        .and_then(|i| state.slots.get(i as usize))
        .filter(|s| s.pid == node.leader_pid && s.present());
    if current.is_some_and(may_lead) {
        return;
    }
    let (cause, index) = match current {
        _ if held.is_none() => (LeaderCause::Start, None),
        Some(s) if s.hung && !s.leaving && s.is(WorkerState::Running) => {
            (LeaderCause::Hang, Some(s.index))
        }
        Some(s) => {
            let reason = state
                .generation(s.generation)
                .map_or(ExitReason::Stop, |g| {
                    g.exit_reason()
                        .unwrap_or_else(|| successor_reason(state, g))
                });
            (leaving_cause(reason), Some(s.index))
        }
        None => gone(
            plan,
            held.and_then(|i| state.slots.get(i as usize)),
            node.leader_pid,
        ),
    };
    let state = plan.state();
    let newest = state.census().newest();
    let next = state
        .slots
        .iter()
        .filter(|s| may_lead(s) && state.generation(s.generation).is_some())
        .min_by_key(|s| {
            (
                s.generation != newest,
                std::cmp::Reverse(s.generation),
                Some(s.index) != index,
                s.index,
            )
        })
        .map(|s| (s.slot, s.worker()));
    if next.is_none() && held.is_none() {
        return;
    }
    let term = node.leader.term().saturating_add(1);
    let detail = Detail::LeaderElected {
        leader: next.map(|(_, w)| w),
        previous_pid: if held.is_some() { node.leader_pid } else { 0 },
        term,
        cause,
    };
    // A vacancy is about the generation of the leader that went.
    let generation = next.map(|(_, w)| w.generation).unwrap_or_else(|| {
        held.and_then(|i| plan.state().slots.get(i as usize))
            .filter(|s| s.pid == node.leader_pid)
            .map_or(0, |s| s.generation)
    });
    plan.event(generation, detail, |plan| {
        set_leader(plan, next.map(|(slot, w)| (slot, w.pid)), cause, term)
    });
}

/// Why a leader that left gracefully leaves.
fn leaving_cause(reason: ExitReason) -> LeaderCause {
    match reason {
        ExitReason::Reload => LeaderCause::Reload,
        ExitReason::Upgrade => LeaderCause::Upgrade,
        ExitReason::Stop | ExitReason::FastStop => LeaderCause::Exit,
    }
}

/// How the leader `pid`, whose slot (`slot`) no longer holds it running, went, and
/// its index: its crash or its exit in this operation; else what the slot says (its
/// tombstone, or the respawn that replaced it: a lock holder that died may have
/// journalled the crash in an operation that ended before electing).
fn gone(plan: &Plan, slot: Option<&Slot>, pid: u32) -> (LeaderCause, Option<u32>) {
    let journalled = plan.journalled().find_map(|e| match e.detail {
        Detail::WorkerCrash { worker, .. } if worker.pid == pid => {
            Some((LeaderCause::Death, Some(worker.index)))
        }
        Detail::WorkerExit { worker, reason } if worker.pid == pid => {
            Some((leaving_cause(reason), Some(worker.index)))
        }
        _ => None,
    });
    journalled.unwrap_or(match slot {
        Some(s) if (s.pid == pid && s.is(WorkerState::Dead)) || s.replaced_pid == pid => {
            (LeaderCause::Death, Some(s.index))
        }
        _ => (LeaderCause::Exit, None),
    })
}

/// What follows a `leader_elected` entry.
fn set_leader(plan: &mut Plan, leader: Option<(u32, u32)>, cause: LeaderCause, term: u64) {
    plan.node(|n| {
        n.leader = LeaderWord::new(leader.map(|(slot, _)| slot), cause, term);
        n.leader_pid = leader.map_or(0, |(_, pid)| pid);
        let count = &mut n.leader_changes[cause.code() as usize % LEADER_CAUSES];
        *count = count.saturating_add(1);
    });
}

// ----- the repair -------------------------------------------------------------------

/// Puts the registry back into a consistent state after the lock's holder died:
/// redoes what follows the newest journal entry, moves the generation counter past
/// every id present, reports `lock_recovered`, and sweeps with the dead holder
/// named. (The journal head and the slot mutexes are the caller's: they are not
/// state the rules read.)
pub(crate) fn repair(
    plan: &mut Plan,
    last: Option<&Event>,
    holder: (u32, LockOp),
    slots: &[SlotProbe],
    me: u32,
    procs: &dyn Processes,
) {
    if let Some(last) = last {
        settle(plan, last);
    }
    let max_id = plan.state().records().map(|g| g.id).max().unwrap_or(0);
    plan.node(|n| n.next_generation = n.next_generation.max(max_id.saturating_add(1)));
    let (holder_pid, holder_op) = holder;
    let detail = Detail::LockRecovered {
        holder_pid,
        holder_op,
    };
    plan.event(0, detail, |_| {});
    sweep(plan, slots, holder_pid, me, procs);
}

/// Redoes what follows `last`, the newest journal entry, which its writer (a lock
/// holder that died) may not have done. Each event's entry is written before its
/// effects, and those effects are done only where they are missing, so they are
/// redone here rather than the event reported twice or lost. The newest entry may be
/// older than the dead holder (it wrote none): then every effect is there already
/// and nothing changes.
pub(crate) fn settle(plan: &mut Plan, last: &Event) {
    let record = record_of(plan.state(), last.generation);
    // The slot of the entry's worker while its process still counts as running:
    // only a dead holder's unfinished operation leaves it so.
    let running = |plan: &Plan, worker: WorkerId| plan.state().running(worker).copied();
    match last.detail {
        Detail::WorkerCrash { worker, .. } => {
            if let Some(s) = running(plan, worker) {
                bury(plan, s.slot, worker);
            }
        }
        Detail::WorkerExit { worker, .. } => {
            // A worker reports its own exit, holding the lock: it is the holder that
            // died, its exit reported. What is left is the slot, and the
            // generation's end if it was the last.
            if let Some(s) = running(plan, worker) {
                plan.slot(s.slot, |s| s.state = Some(WorkerState::Free));
                if let Some(record) = record {
                    end_if_last(plan, record, false);
                }
            }
        }
        Detail::MasterExit { reason } => {
            let g = record.map(|record| generation_at(plan, record));
            match g {
                Some(g) if g.has_workers_to_end() => {
                    // The holder died with it: the run did not end cleanly.
                    end_generation(plan, g.record, reason, false);
                }
                // Ended, but perhaps not yet retired; perhaps the run not ended.
                Some(g) if g.is(GenerationState::Exited) => {
                    retire_unless_newest(plan, g.record);
                    end_unfinished_run(plan, false);
                }
                Some(_) => {}
                None => end_unfinished_run(plan, false),
            }
        }
        Detail::GenerationAbort { .. } => match record {
            Some(record) if generation_at(plan, record).is(GenerationState::Starting) => {
                withdraw(plan, record)
            }
            Some(_) => {}
            None => end_unfinished_run(plan, true),
        },
        Detail::WorkerHang { worker, .. } | Detail::WorkerRecover { worker, .. } => {
            let hung = matches!(last.detail, Detail::WorkerHang { .. });
            if let Some(s) = running(plan, worker).filter(|s| s.hung != hung) {
                set_hung(plan, s.slot, hung);
            }
        }
        Detail::WorkerCrashLoop { worker, .. } | Detail::WorkerCrashLoopEnd { worker, .. } => {
            let looping = matches!(last.detail, Detail::WorkerCrashLoop { .. });
            set_looping(plan, worker.index, looping);
        }
        Detail::LeaderElected {
            leader,
            term,
            cause,
            ..
        } => {
            if plan.state().node.leader.term() < term {
                let slot = leader.and_then(|w| running(plan, w)).map(|s| s.slot);
                set_leader(plan, slot.zip(leader.map(|w| w.pid)), cause, term);
            }
        }
        Detail::MasterStart { .. } | Detail::WorkerStart { .. } | Detail::LockRecovered { .. } => {}
    }
}
