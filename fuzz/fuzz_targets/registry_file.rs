#![no_main]
//! A registry file with arbitrary content, opened the two ways the library opens
//! one: read-only by an `Observer` (the CLI, metrics), and for writing by a
//! `Registry`, which then runs a few operations. Either must succeed and stay
//! consistent, or return an `Error`; nothing may panic, abort, hang or leak.
//!
//! A valid registry is 274432 bytes, so random bytes would only ever be "truncated".
//! The input is therefore either the raw file content or, mostly, a list of patches
//! over a valid image made once per process with the real API (every event kind in
//! a journal that has wrapped, tombstones, a repaired lock).
//!
//! The writer is given the mutexes of the valid image back before it opens the file:
//! the library trusts the mutex words of a registry (`core/src/lock.rs`, "Trust
//! boundary"; glibc aborts on some corrupt robust mutexes), which is why the file
//! must belong to the node's user. And every file is at rest, its change sequence
//! even: a change left open makes each reading wait (50 ms, 2 s if the recorded
//! lock holder lives), by design, which costs time and finds nothing that the unit
//! tests of `core/src/change.rs` do not. Everything else stays as patched.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::mem::discriminant;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use worker_manager::{
    exposition, Capacities, Error, GenerationConfig, Observer, Options, Registry, Snapshot, Worker,
    WorkerState,
};
use worker_manager_fuzz::{holder_dies, impatient, scratch_dir, worker_dies};

/// The layout of `docs/design.md` section 2, checked against a real file at start.
const HEADER_SIZE: usize = 4096;
const RECORD_SIZE: usize = 128;
/// `cap_generations`, `cap_workers`, `cap_events`: three u32 after the magic and
/// four u32 of versions and sizes.
const CAPS_OFFSET: usize = 24;
/// The header's registry lock, after the capacities, `slot_high_water`,
/// `total_size`, `created_ns` and `boot_id`.
const LOCK_OFFSET: usize = 72;
const MUTEX_SIZE: usize = std::mem::size_of::<libc::pthread_mutex_t>();
const MAX_CAPACITY: u32 = 65536;
/// Operations a writer runs per input: enough for any interplay, few enough to
/// keep iterations fast.
const MAX_OPS: usize = 16;

struct Image {
    /// A registry with history, and no mutex held.
    bytes: Vec<u8>,
    /// A mutex as a new registry initialises it (robust, process-shared,
    /// error-checking, unlocked).
    mutex: Vec<u8>,
    /// Offset of the header's change sequence.
    change_seq: usize,
    caps: Capacities,
}

fn quiet(_: &worker_manager::Event) {}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = scratch_dir();
        let caps = Capacities::default();

        let fresh_path = dir.join("fresh.wm");
        drop(Registry::open(&fresh_path, &impatient()).unwrap());
        let fresh = fs::read(&fresh_path).unwrap();
        fs::remove_file(&fresh_path).unwrap();
        // Generations, slots, journal entries, crash histories (one per slot).
        let records = (caps.generations + 2 * caps.workers + caps.events) as usize;
        assert_eq!(fresh.len(), HEADER_SIZE + RECORD_SIZE * records, "layout");
        let mutex = fresh[LOCK_OFFSET..LOCK_OFFSET + MUTEX_SIZE].to_vec();
        let first_slot = record_offset(caps.generations);
        assert!(mutex.iter().any(|&b| b != 0), "the header lock's offset");
        assert_eq!(
            mutex,
            fresh[first_slot..first_slot + MUTEX_SIZE],
            "the header lock and a slot mutex are initialised alike"
        );

        let path = dir.join("image.wm");
        let (bytes, change_seq) = history(&path);
        fs::remove_file(&path).unwrap();
        Image {
            bytes,
            mutex,
            change_seq,
            caps,
        }
    })
}

/// Where record `index` of the tables (generations, then slots, then events, then
/// crash histories) starts.
fn record_offset(index: u32) -> usize {
    HEADER_SIZE + RECORD_SIZE * index as usize
}

/// Makes a registry at `path` go through every kind of event; returns its bytes and
/// the offset of its change sequence.
fn history(path: &Path) -> (Vec<u8>, usize) {
    let registry = Registry::open(path, &impatient()).unwrap();
    let ms = Duration::from_millis;
    let twitchy = GenerationConfig {
        interval: ms(1),
        failed: ms(1),
        start_timeout: ms(60_000),
        expected_workers: 4,
        // The two crashes of index 1 below are a loop.
        crash_loop_intensity: 1,
        crash_loop_period: ms(60_000),
    };
    let first = registry.register_generation(&twitchy, quiet).unwrap();
    // More entries than the journal ring holds, so that it has wrapped.
    for i in 0..400 {
        let worker = registry.register_worker(first, i % 4, quiet).unwrap();
        registry.exit_worker(worker, i % 3 != 0, quiet).unwrap();
    }
    let worker = registry.register_worker(first, 0, quiet).unwrap();
    std::thread::sleep(ms(5));
    registry.sweep(quiet).unwrap();
    registry.heartbeat(&worker).unwrap();
    registry.sweep(quiet).unwrap();
    registry.announce_exit(&worker, quiet).unwrap();
    registry.exit_worker(worker, true, quiet).unwrap();
    // A crash, its respawn into the tombstone, and the respawn's crash.
    worker_dies(path, first, 1);
    registry.sweep(quiet).unwrap();
    worker_dies(path, first, 1);
    registry.sweep(quiet).unwrap();
    holder_dies(path);
    registry.sweep(quiet).unwrap();
    let second = registry
        .register_generation(&GenerationConfig::default(), quiet)
        .unwrap();
    worker_dies(path, second, 0);
    let stalled = GenerationConfig {
        start_timeout: ms(1),
        ..GenerationConfig::default()
    };
    registry.register_generation(&stalled, quiet).unwrap();
    std::thread::sleep(ms(3));
    registry.sweep(quiet).unwrap();
    // Starting for as long as allowed: no sweep aborts it in the middle of a run, so
    // that what an input does, and a reproduction of it, does not depend on how
    // long the process has been running.
    let waiting = GenerationConfig {
        start_timeout: Duration::from_secs(86_400),
        ..GenerationConfig::default()
    };
    registry.register_generation(&waiting, quiet).unwrap();
    let bytes = fs::read(path).unwrap();
    assert!(registry.observe().consistent);
    registry.sweep(quiet).unwrap();
    let swept = fs::read(path).unwrap();
    let change_seq = change_seq_offset(&bytes, &swept);
    (swept, change_seq)
}

/// The header word that a quiet sweep, one change, moved by exactly 2: the change
/// sequence.
fn change_seq_offset(before: &[u8], after: &[u8]) -> usize {
    let word = |bytes: &[u8], at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    let moved: Vec<usize> = (0..HEADER_SIZE)
        .step_by(4)
        .filter(|&at| word(after, at) == word(before, at).wrapping_add(2))
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "the change sequence is one word of the header"
    );
    moved[0]
}

#[derive(Arbitrary, Debug)]
enum Content {
    /// The file is exactly these bytes.
    Raw(Vec<u8>),
    /// The valid image, resized, with patches applied in order.
    Patched { length: Length, patches: Vec<Patch> },
}

#[derive(Arbitrary, Debug)]
enum Length {
    Keep,
    Truncate(u32),
    Extend(u16),
}

#[derive(Arbitrary, Debug)]
struct Patch {
    place: Place,
    value: Value,
}

/// Where a patch goes: a byte offset into one of the tables (record index and
/// offset within the record, wrapped to the image's capacities), or anywhere.
#[derive(Arbitrary, Debug)]
enum Place {
    Header(u16),
    Generation(u8, u8),
    Slot(u16, u8),
    Event(u16, u8),
    History(u16, u8),
    Anywhere(u32),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Bytes(Vec<u8>),
    /// Aligned as the fields are.
    U32(u32),
    U64(u64),
    Fill {
        len: u8,
        byte: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum CapacityChoice {
    Default,
    /// Used when the writer creates the file (an empty one); 0 is invalid.
    Small(u8, u8, u8),
}

#[derive(Arbitrary, Debug)]
enum GenerationChoice {
    /// The last one this input registered.
    Registered,
    /// The n-th tracked generation of a snapshot.
    Tracked(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Sweep,
    TrySweep,
    Snapshot,
    Observe,
    EventsSince(u64),
    WithLock,
    HoldLock,
    RegisterGeneration {
        interval_ms: u32,
        failed_ms: u32,
        start_timeout_ms: u32,
        expected_workers: u32,
        crash_loop_intensity: u32,
        crash_loop_period_ms: u32,
    },
    RegisterWorker {
        generation: GenerationChoice,
        index: u32,
    },
    Heartbeat,
    AnnounceExit,
    ExitWorker {
        graceful: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    content: Content,
    capacities: CapacityChoice,
    from_seq: u64,
    ops: Vec<Op>,
}

fn patched(image: &Image, length: &Length, patches: &[Patch]) -> Vec<u8> {
    let mut bytes = image.bytes.clone();
    match *length {
        Length::Keep => {}
        Length::Truncate(n) => bytes.truncate(n as usize % (bytes.len() + 1)),
        Length::Extend(n) => bytes.resize(bytes.len() + n as usize, 0),
    }
    let caps = image.caps;
    let table = |first: u32, count: u32, record: u32, field: u8| {
        record_offset(first + record % count) + field as usize % RECORD_SIZE
    };
    for patch in patches {
        if bytes.is_empty() {
            break;
        }
        let offset = match patch.place {
            Place::Header(at) => at as usize % HEADER_SIZE,
            Place::Generation(r, f) => table(0, caps.generations, r.into(), f),
            Place::Slot(r, f) => table(caps.generations, caps.workers, r.into(), f),
            Place::Event(r, f) => table(caps.generations + caps.workers, caps.events, r.into(), f),
            Place::History(r, f) => table(
                caps.generations + caps.workers + caps.events,
                caps.workers,
                r.into(),
                f,
            ),
            Place::Anywhere(at) => at as usize % bytes.len(),
        };
        let value: Vec<u8> = match &patch.value {
            Value::Bytes(b) => b.clone(),
            Value::U32(v) => v.to_ne_bytes().to_vec(),
            Value::U64(v) => v.to_ne_bytes().to_vec(),
            Value::Fill { len, byte } => vec![*byte; *len as usize],
        };
        let offset = match patch.value {
            Value::U32(_) => offset & !3,
            Value::U64(_) => offset & !7,
            _ => offset,
        };
        if offset < bytes.len() {
            let end = (offset + value.len()).min(bytes.len());
            bytes[offset..end].copy_from_slice(&value[..end - offset]);
        }
    }
    bytes
}

/// The content with every mutex of the layout its header describes set to an
/// initialised, unlocked one; `None` if nothing changed.
fn with_trusted_mutexes(image: &Image, content: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = content.to_vec();
    let mut put = |at: usize| {
        if at < bytes.len() {
            let end = (at + MUTEX_SIZE).min(bytes.len());
            bytes[at..end].copy_from_slice(&image.mutex[..end - at]);
        }
    };
    put(LOCK_OFFSET);
    let cap = |i: usize| {
        let at = CAPS_OFFSET + 4 * i;
        content
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
            .filter(|&n| (1..=MAX_CAPACITY).contains(&n))
    };
    if let (Some(generations), Some(workers)) = (cap(0), cap(1)) {
        for slot in 0..workers {
            put(record_offset(generations.saturating_add(slot)));
        }
    }
    (bytes != content).then_some(bytes)
}

fn write_file(path: &Path, content: &[u8]) {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("creating the registry file");
    file.write_all(content).expect("writing the registry file");
}

/// Checks what readers rely on in a snapshot and the journal.
fn check_reading(snapshot: &Snapshot, caps: Capacities, events: &[worker_manager::Event]) {
    assert_eq!(snapshot.capacities, caps);
    assert!(snapshot.generations.len() <= caps.generations as usize);
    assert!(snapshot.workers.len() <= caps.workers as usize);
    assert!(snapshot.generations.windows(2).all(|w| w[0].id <= w[1].id));
    assert!(snapshot.generations.iter().all(|g| g.id != 0));
    assert!(snapshot
        .workers
        .iter()
        .all(|w| w.state != WorkerState::Free));
    assert!(events.len() <= caps.events as usize);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().all(|e| e.seq != 0));
}

fn read(path: &Path, from_seq: u64) -> Result<(), Error> {
    let observer = Observer::open(path)?;
    let caps = observer.capacities();
    let records = caps.generations + 2 * caps.workers + caps.events;
    assert_eq!(observer.size(), record_offset(records) as u64);
    let snapshot = observer.snapshot();
    let next = observer.next_seq();
    let events = observer.events_since(from_seq);
    check_reading(&snapshot, caps, &events);
    assert!(events.iter().all(|e| e.seq >= from_seq && e.seq < next));
    check_reading(&snapshot, caps, &observer.events_since(0));
    let _ = observer.wait_for_event(next, Duration::ZERO);
    let text = exposition::prometheus(&snapshot, observer.path());
    assert!(text.starts_with("# HELP worker_manager_"));
    Ok(())
}

struct Writer<'r> {
    registry: &'r Registry,
    workers: Vec<Worker>,
    registered: Option<u64>,
}

impl Writer<'_> {
    fn generation(&self, choice: &GenerationChoice) -> u64 {
        match *choice {
            GenerationChoice::Registered => self.registered.unwrap_or(1),
            GenerationChoice::Tracked(n) => {
                let generations = self.registry.observe().generations;
                generations
                    .get(n as usize % generations.len().max(1))
                    .map_or(0, |g| g.id)
            }
            GenerationChoice::Raw(id) => id,
        }
    }

    /// Runs one operation; its errors are expected, its panics are findings.
    fn run(&mut self, op: &Op) {
        let registry = self.registry;
        let caps = registry.capacities();
        match op {
            Op::Sweep => drop(registry.sweep(quiet)),
            Op::TrySweep => drop(registry.try_sweep(quiet)),
            Op::Snapshot => {
                if let Ok(snapshot) = registry.snapshot() {
                    check_reading(&snapshot, caps, &[]);
                    assert!(snapshot.consistent);
                }
            }
            Op::Observe => check_reading(&registry.observe(), caps, &[]),
            Op::EventsSince(from) => {
                let events = registry.events_since(*from);
                check_reading(&registry.observe(), caps, &events);
                assert!(events.iter().all(|e| e.seq >= *from));
            }
            Op::WithLock => {
                let inner = registry.with_lock(|| registry.snapshot().map(|s| s.consistent));
                if let Ok(inner) = inner {
                    assert!(inner.is_ok(), "the lock is re-entrant");
                }
            }
            Op::HoldLock => {
                if let Ok((hold, _)) = registry.hold_lock() {
                    let _ = registry.sweep(quiet);
                    drop(hold);
                }
            }
            Op::RegisterGeneration {
                interval_ms,
                failed_ms,
                start_timeout_ms,
                expected_workers,
                crash_loop_intensity,
                crash_loop_period_ms,
            } => {
                let ms = |n: u32| Duration::from_millis(n.into());
                let config = GenerationConfig {
                    interval: ms(*interval_ms),
                    failed: ms(*failed_ms),
                    start_timeout: ms(*start_timeout_ms),
                    expected_workers: *expected_workers,
                    crash_loop_intensity: *crash_loop_intensity,
                    crash_loop_period: ms(*crash_loop_period_ms),
                };
                if let Ok(id) = registry.register_generation(&config, quiet) {
                    assert_ne!(id, 0);
                    self.registered = Some(id);
                }
            }
            Op::RegisterWorker { generation, index } => {
                let generation = self.generation(generation);
                if let Ok(worker) = registry.register_worker(generation, *index, quiet) {
                    assert!(
                        self.workers.is_empty(),
                        "a second worker registered for this process"
                    );
                    self.workers.push(worker);
                }
            }
            Op::Heartbeat => {
                if let Some(worker) = self.workers.first() {
                    let _ = registry.heartbeat(worker);
                }
            }
            Op::AnnounceExit => {
                if let Some(worker) = self.workers.first() {
                    let _ = registry.announce_exit(worker, quiet);
                }
            }
            Op::ExitWorker { graceful } => {
                if let Some(worker) = self.workers.pop() {
                    self.exit(worker, *graceful);
                }
            }
        }
    }

    /// A worker this process registered must be able to leave: otherwise its slot
    /// mutex stays held and the mapping is kept for the rest of the process.
    fn exit(&self, worker: Worker, graceful: bool) {
        let id = worker.id();
        if let Err(e) = self.registry.exit_worker(worker, graceful, quiet) {
            panic!("worker {id} registered by this input cannot exit: {e}");
        }
    }
}

fn write(path: &Path, caps: Capacities, input: &Input) -> Result<(), Error> {
    let options = Options {
        capacities: caps,
        ..impatient()
    };
    let registry = Registry::open(path, &options)?;
    let mut writer = Writer {
        registry: &registry,
        workers: Vec::new(),
        registered: None,
    };
    for op in input.ops.iter().take(MAX_OPS) {
        writer.run(op);
    }
    while let Some(worker) = writer.workers.pop() {
        writer.exit(worker, true);
    }

    // What a reader sees once the writer is done is what the writer sees.
    let observer = Observer::open(path).expect("a registry a writer opened is readable");
    let mine = registry.snapshot();
    let theirs = observer.snapshot();
    if let Ok(mine) = mine {
        if theirs.consistent {
            assert_eq!(mine.generations, theirs.generations);
            let workers =
                |s: &Snapshot| -> Vec<_> { s.workers.iter().map(|w| (w.id, w.state)).collect() };
            assert_eq!(workers(&mine), workers(&theirs));
            assert_eq!(mine.next_seq, theirs.next_seq);
            assert_eq!(mine.run_state, theirs.run_state);
        }
    }
    assert_eq!(
        registry.events_since(input.from_seq),
        observer.events_since(input.from_seq)
    );
    Ok(())
}

/// The same file must be refused for the same reason by both openings: they share
/// the header checks.
fn agree(read: &Result<(), Error>, write: &Result<(), Error>, len: usize, caps: Capacities) {
    let caps_valid = [caps.generations, caps.workers, caps.events]
        .iter()
        .all(|n| (1..=MAX_CAPACITY).contains(n));
    if len == 0 || !caps_valid {
        return;
    }
    match (read, write) {
        (Ok(()), Ok(())) => {}
        (Err(r), Err(w)) => {
            assert_eq!(discriminant(r), discriminant(w), "reader: {r}; writer: {w}")
        }
        (Err(r), Ok(())) => panic!("the reader refuses what the writer accepts: {r}"),
        (Ok(()), Err(w)) => panic!("the writer refuses what the reader accepts: {w}"),
    }
}

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| scratch_dir().join("registry.wm"))
}

fuzz_target!(|input: Input| {
    let image = image();
    let mut content = match &input.content {
        Content::Raw(bytes) => bytes.clone(),
        Content::Patched { length, patches } => patched(image, length, patches),
    };
    let caps = match input.capacities {
        CapacityChoice::Default => Capacities::default(),
        CapacityChoice::Small(g, w, e) => Capacities {
            generations: g.into(),
            workers: w.into(),
            events: e.into(),
        },
    };
    if let Some(word) = content.get_mut(image.change_seq..image.change_seq + 4) {
        let even = u32::from_ne_bytes((&*word).try_into().unwrap()) & !1;
        word.copy_from_slice(&even.to_ne_bytes());
    }
    let path = path();
    write_file(path, &content);
    let read = read(path, input.from_seq);
    if let Some(trusted) = with_trusted_mutexes(image, &content) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&trusted, 0).unwrap();
    }
    let write = write(path, caps, &input);
    agree(&read, &write, content.len(), caps);
    fs::remove_file(path).unwrap();
});
