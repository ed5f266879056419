//! The lifecycle as data: every state and every kind of event is an enum with a
//! fixed numeric code, which is what the registry stores. Unknown codes (a corrupt
//! or newer file) decode to `None`, never to a guess.

use std::fmt;

macro_rules! coded_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $code,)+
        }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The code stored in the registry.
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The variant for a stored code.
            pub const fn from_code(code: u32) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The lower-case name used in logs, JSON and the Lua API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

coded_enum! {
    /// Why a generation started.
    StartKind {
        /// The registry had never seen a generation.
        Start = 1 => "start",
        /// The registry belongs to an earlier node run that has ended.
        Restart = 2 => "restart",
        /// The same master loaded its configuration again (SIGHUP).
        Reload = 3 => "reload",
        /// A different master process while the older one lives (binary upgrade).
        Upgrade = 4 => "upgrade",
    }
}

coded_enum! {
    /// How a node run ended.
    RunEnd {
        /// Its last worker exited through the API.
        Clean = 1 => "clean",
        /// Some process died without exiting.
        Unclean = 2 => "unclean",
    }
}

coded_enum! {
    /// Why a worker (or a whole generation) exits.
    ExitReason {
        /// A newer generation of the same master replaces it.
        Reload = 1 => "reload",
        /// A newer generation of another master replaces it.
        Upgrade = 2 => "upgrade",
        /// Graceful stop of the node (SIGQUIT), or nothing replaces it.
        Stop = 3 => "stop",
        /// Fast stop (SIGTERM, SIGINT): no graceful shutdown.
        FastStop = 4 => "fast_stop",
    }
}

coded_enum! {
    /// How a worker's death was noticed.
    Detection {
        /// Its slot's robust mutex was marked owner-died by the kernel.
        OwnerDied = 1 => "owner_died",
        /// Its slot's mutex was free although the slot was in use: the registry
        /// outlived the processes (for example across a reboot).
        Abandoned = 2 => "abandoned",
    }
}

coded_enum! {
    /// Why a generation that never had a worker was given up.
    AbortCause {
        /// A newer generation registered first.
        Superseded = 1 => "superseded",
        /// No worker registered within the start timeout.
        TimedOut = 2 => "timed_out",
        /// nginx gave the configuration up after its `init_by_lua` ran (a port that
        /// cannot be bound, an error later in `init_by_lua`): its Lua VM was closed
        /// before it was committed.
        Failed = 3 => "failed",
    }
}

coded_enum! {
    /// Why the node's leadership changed (`docs/design.md` 4.9).
    LeaderCause {
        /// There was no leader: a first worker, or one after a vacancy.
        Start = 1 => "start",
        /// The leader began its graceful exit for a reload.
        Reload = 2 => "reload",
        /// The leader began its graceful exit for a binary upgrade.
        Upgrade = 3 => "upgrade",
        /// The leader died without exiting.
        Death = 4 => "death",
        /// The leader's heartbeat was overdue past `failed`.
        Hang = 5 => "hang",
        /// The leader exited otherwise (the node stops, a fast stop).
        Exit = 6 => "exit",
    }
}

coded_enum! {
    /// The state of a tracked generation.
    GenerationState {
        /// The record is unused.
        Free = 0 => "free",
        /// Registered; no worker yet.
        Starting = 1 => "starting",
        /// Has had workers; none has exited gracefully.
        Running = 2 => "running",
        /// Its workers are exiting (a worker exited gracefully).
        Draining = 3 => "draining",
        /// No live worker left; kept only while it is the newest.
        Exited = 4 => "exited",
    }
}

coded_enum! {
    /// The state of a worker slot.
    WorkerState {
        /// Unused.
        Free = 0 => "free",
        /// A live registered worker.
        Running = 1 => "running",
        /// A worker that died without exiting, kept so that its respawn is recognised.
        Dead = 2 => "dead",
        /// A worker that announced its exit (graceful shutdown began) and whose
        /// process still runs; no longer counted in `n_mine`.
        Exiting = 3 => "exiting",
    }
}

impl GenerationState {
    /// The transitions the rules make, each with what makes it; anything else is a
    /// bug. `docs/design.md` 4.1 draws the same table.
    pub const TRANSITIONS: &'static [(GenerationState, GenerationState, &'static str)] = &[
        (Self::Free, Self::Starting, "register"),
        (Self::Starting, Self::Running, "first worker"),
        (Self::Starting, Self::Free, "abort"),
        (Self::Running, Self::Draining, "a worker exits"),
        (Self::Running, Self::Exited, "last worker gone"),
        (Self::Draining, Self::Exited, "last worker gone"),
        (Self::Exited, Self::Running, "a worker registers"),
        (Self::Exited, Self::Free, "retire"),
    ];

    /// Whether the rules may change a generation from `self` to `next`.
    pub fn can_become(self, next: GenerationState) -> bool {
        listed(Self::TRANSITIONS, self, next)
    }
}

impl WorkerState {
    /// The transitions the rules make, each with what makes it; anything else is a
    /// bug. `docs/design.md` 4.1 draws the same table.
    pub const TRANSITIONS: &'static [(WorkerState, WorkerState, &'static str)] = &[
        (Self::Free, Self::Running, "register"),
        (
            Self::Dead,
            Self::Running,
            "register (a respawn, or a tombstone reused)",
        ),
        (Self::Running, Self::Free, "exit"),
        (Self::Running, Self::Exiting, "announce exit"),
        (Self::Exiting, Self::Free, "exit, or process gone"),
        (Self::Running, Self::Dead, "death detected"),
        (Self::Dead, Self::Free, "generation retired"),
    ];

    /// Whether the rules may change a slot from `self` to `next`.
    pub fn can_become(self, next: WorkerState) -> bool {
        listed(Self::TRANSITIONS, self, next)
    }
}

/// Whether `table` has the transition from `from` to `to`.
fn listed<S: PartialEq>(table: &[(S, S, &str)], from: S, to: S) -> bool {
    table.iter().any(|(f, t, _)| *f == from && *t == to)
}

coded_enum! {
    /// The kind of an event.
    #[non_exhaustive]
    EventKind {
        MasterStart = 1 => "master_start",
        WorkerStart = 2 => "worker_start",
        WorkerExit = 3 => "worker_exit",
        MasterExit = 4 => "master_exit",
        WorkerCrash = 5 => "worker_crash",
        GenerationAbort = 6 => "generation_abort",
        WorkerHang = 7 => "worker_hang",
        WorkerRecover = 8 => "worker_recover",
        /// The registry lock's holder died holding it; the registry was repaired.
        LockRecovered = 9 => "lock_recovered",
        /// One worker index crashed more often than the crash-loop rule allows.
        WorkerCrashLoop = 10 => "worker_crash_loop",
        /// An index in a crash loop has not crashed for the rule's whole period.
        WorkerCrashLoopEnd = 11 => "worker_crash_loop_end",
        /// The node's leadership changed: a new leader, or none.
        LeaderElected = 12 => "leader_elected",
    }
}

impl EventKind {
    /// Whether any live process of the node may run the event's callbacks: true for
    /// what one process finds out about others (a crash, the end or abort of a
    /// generation, a hang, a recovered lock); false for what a process says of
    /// itself (its generation's or its own start, its own exit). Events of the first
    /// kind are delivered again when the process running their callbacks dies first.
    pub const fn is_node_level(self) -> bool {
        matches!(
            self,
            EventKind::MasterExit
                | EventKind::WorkerCrash
                | EventKind::GenerationAbort
                | EventKind::WorkerHang
                | EventKind::WorkerRecover
                | EventKind::LockRecovered
                | EventKind::WorkerCrashLoop
                | EventKind::WorkerCrashLoopEnd
        )
    }
}

coded_enum! {
    /// What the registry lock's holder is doing, for diagnostics.
    LockOp {
        None = 0 => "nothing",
        RegisterGeneration = 1 => "register_generation",
        RegisterWorker = 2 => "register_worker",
        ExitWorker = 3 => "exit_worker",
        Sweep = 4 => "sweep",
        Snapshot = 5 => "snapshot",
        /// `Registry::with_lock`.
        User = 6 => "user",
    }
}

/// The state of a node run, stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// The registry has never had a generation.
    Never,
    /// A run is in progress.
    Running,
    /// The last run ended.
    Ended(RunEnd),
}

impl RunState {
    /// Every state, in code order.
    pub const ALL: &'static [RunState] = &[
        RunState::Never,
        RunState::Running,
        RunState::Ended(RunEnd::Clean),
        RunState::Ended(RunEnd::Unclean),
    ];

    /// Whether the rules may change the run from `self` to `next`: a run starts
    /// (from none, or after one ended) and ends. A generation that ends after the
    /// run did (its last worker died after the others exited) says again how the
    /// run ended: a death makes it unclean.
    pub fn can_become(self, next: RunState) -> bool {
        matches!(
            (self, next),
            (RunState::Never | RunState::Ended(_), RunState::Running)
                | (RunState::Running | RunState::Ended(_), RunState::Ended(_))
        )
    }

    /// The code stored in the registry.
    pub const fn code(self) -> u32 {
        match self {
            RunState::Never => 0,
            RunState::Running => 1,
            RunState::Ended(RunEnd::Clean) => 2,
            RunState::Ended(RunEnd::Unclean) => 3,
        }
    }

    /// Its name: `never`, `running`, `ended_clean`, `ended_unclean`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Never => "never",
            RunState::Running => "running",
            RunState::Ended(RunEnd::Clean) => "ended_clean",
            RunState::Ended(RunEnd::Unclean) => "ended_unclean",
        }
    }

    /// The state for a stored code.
    pub const fn from_code(code: u32) -> Option<RunState> {
        match code {
            0 => Some(RunState::Never),
            1 => Some(RunState::Running),
            2 => Some(RunState::Ended(RunEnd::Clean)),
            3 => Some(RunState::Ended(RunEnd::Unclean)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_refused() {
        for &k in EventKind::ALL {
            assert_eq!(EventKind::from_code(k.code()), Some(k));
        }
        for &r in ExitReason::ALL {
            assert_eq!(ExitReason::from_code(r.code()), Some(r));
        }
        assert_eq!(EventKind::from_code(0), None);
        assert_eq!(StartKind::from_code(99), None);
        for &r in RunState::ALL {
            assert_eq!(RunState::from_code(r.code()), Some(r));
        }
        assert_eq!(RunState::from_code(4), None);
        assert_eq!(ExitReason::FastStop.to_string(), "fast_stop");
    }

    /// The rows `| from | to | by |` of the table after `title` in the design doc.
    fn documented(title: &str) -> Vec<(String, String, String)> {
        let doc = include_str!("../../docs/design.md");
        let start = doc.find(title).expect("the table's title");
        doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|row| {
                let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].into(), cells[1].into(), cells[2].into())
            })
            .collect()
    }

    fn table<S: Copy + fmt::Display>(rows: &[(S, S, &str)]) -> Vec<(String, String, String)> {
        rows.iter()
            .map(|&(from, to, by)| (from.to_string(), to.to_string(), by.to_string()))
            .collect()
    }

    #[test]
    fn the_design_doc_draws_exactly_the_transitions_of_the_code() {
        assert_eq!(
            documented("Generation records:"),
            table(GenerationState::TRANSITIONS)
        );
        assert_eq!(documented("Worker slots:"), table(WorkerState::TRANSITIONS));
    }

    #[test]
    fn transitions_are_the_tables() {
        use GenerationState as G;
        use WorkerState as W;
        for (from, to, legal) in [
            (G::Free, G::Starting, true),
            (G::Starting, G::Running, true),
            (G::Starting, G::Draining, false),
            (G::Draining, G::Running, false),
            (G::Exited, G::Draining, false),
            (G::Running, G::Free, false),
        ] {
            assert_eq!(from.can_become(to), legal, "{from} -> {to}");
        }
        for (from, to, legal) in [
            (W::Free, W::Running, true),
            (W::Dead, W::Running, true),
            (W::Exiting, W::Dead, false),
            (W::Free, W::Dead, false),
            (W::Dead, W::Exiting, false),
        ] {
            assert_eq!(from.can_become(to), legal, "{from} -> {to}");
        }
        let ended = RunState::Ended(RunEnd::Clean);
        assert!(RunState::Never.can_become(RunState::Running));
        assert!(ended.can_become(RunState::Running));
        assert!(RunState::Running.can_become(ended));
        assert!(!RunState::Never.can_become(ended));
        assert!(!RunState::Running.can_become(RunState::Never));
    }
}
