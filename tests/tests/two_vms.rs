//! One process, two Lua VMs: nginx's http and stream subsystems each track their
//! workers through their own C ABI handle, on their own registry. Real processes
//! (`wm-abi-probe`), real `kill -9`: each registry sees exactly the events it would
//! see alone.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::json::Named;
use common::{kill9, Scratch};
use serde::Deserialize;
use worker_manager::{Detail, Event, EventKind, GenerationConfig, Options, Registry};

struct Both {
    child: Child,
    pid: u32,
}

impl Drop for Both {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process registered as worker 0 of `http` and of `stream`.
fn worker_of_both(
    scratch: &Scratch,
    http: u64,
    stream: u64,
) -> (Both, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wm-abi-probe"))
        .arg(scratch.path("http.wm"))
        .arg(http.to_string())
        .arg(scratch.path("stream.wm"))
        .arg(stream.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn wm-abi-probe");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("wm-abi-probe: {line}"))
        .trim()
        .parse()
        .unwrap();
    (Both { child, pid }, out)
}

/// An event as `wm-abi-probe` prints it.
#[derive(Debug, Deserialize)]
struct AbiEvent {
    handle: String,
    event: String,
    seq: u64,
    generation: u64,
    pid: u32,
    index: i32,
    n_mine: i32,
}

impl AbiEvent {
    fn kind(&self) -> EventKind {
        EventKind::from_name(&self.event)
            .unwrap_or_else(|| panic!("an event of no known kind: {self:?}"))
    }
}

/// The lifecycle events of the journal: all but the leaders' elections, which the
/// leader tests follow (who detects a crash decides whether a vacancy is journalled
/// before the respawn leads).
fn lifecycle(registry: &Registry) -> Vec<Event> {
    registry
        .events_since(1)
        .into_iter()
        .filter(|e| e.kind() != EventKind::LeaderElected)
        .collect()
}

fn kinds(registry: &Registry) -> Vec<EventKind> {
    lifecycle(registry).iter().map(|e| e.kind()).collect()
}

#[test]
fn http_and_stream_workers_of_one_process_are_tracked_apart() {
    let scratch = Scratch::new();
    let open = |name: &str| Registry::open(scratch.path(name), &Options::default()).unwrap();
    let (http, stream) = (open("http.wm"), open("stream.wm"));
    let config = GenerationConfig::default();
    let g_http = http.register_generation(&config, |_| {}).unwrap();
    let g_stream = stream.register_generation(&config, |_| {}).unwrap();

    // A worker of both is killed: one crash in each registry, of the same pid.
    let (mut killed, _) = worker_of_both(&scratch, g_http, g_stream);
    kill9(killed.pid);
    killed.child.wait().unwrap();
    for registry in [&http, &stream] {
        registry.sweep(|_| {}).unwrap();
        let crashes: Vec<u32> = registry
            .events_since(1)
            .iter()
            .filter_map(|e| match e.detail {
                Detail::WorkerCrash { worker, .. } => Some(worker.pid),
                _ => None,
            })
            .collect();
        assert_eq!(crashes, [killed.pid]);
    }

    // Its respawn is a worker of both again, and exits from both.
    let (mut respawn, mut out) = worker_of_both(&scratch, g_http, g_stream);
    writeln!(respawn.child.stdin.as_mut().unwrap(), "exit").unwrap();
    let mut events: Vec<AbiEvent> = Vec::new();
    let mut last = String::new();
    for line in (&mut out).lines() {
        last = line.unwrap();
        match serde_json::from_str(&last) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
    }
    assert_eq!(last, "ok", "{events:?}");
    // Each handle still holds its registration's event, then reports the worker's
    // exit, and the generation's end with it: the worker was the last of each.
    for (handle, generation, registry) in [("http", g_http, &http), ("stream", g_stream, &stream)] {
        let of_handle: Vec<&AbiEvent> = events.iter().filter(|e| e.handle == handle).collect();
        let of_handle: Vec<&AbiEvent> = of_handle
            .into_iter()
            .filter(|e| e.kind() != EventKind::LeaderElected)
            .collect();
        let seen: Vec<EventKind> = of_handle.iter().map(|e| e.kind()).collect();
        assert_eq!(
            seen,
            [
                EventKind::WorkerStart,
                EventKind::WorkerExit,
                EventKind::MasterExit
            ],
            "{handle}: {events:?}"
        );
        // The respawn led until its exit left no worker to lead.
        let last = registry.events_since(1).last().copied().unwrap();
        assert!(
            matches!(last.detail, Detail::LeaderElected { leader: None, previous_pid, .. } if previous_pid == respawn.pid),
            "{handle}: {last}"
        );
        for e in &of_handle[..2] {
            assert_eq!(
                (e.generation, e.pid, e.index, e.n_mine),
                (generation, respawn.pid, 0, 1),
                "{handle}: {e:?}"
            );
        }
        assert_eq!(of_handle[2].generation, generation, "{handle}");
        // The journal's last three lifecycle entries, as journalled.
        let journalled: Vec<u64> = lifecycle(registry)[3..].iter().map(|e| e.seq).collect();
        let reported: Vec<u64> = of_handle.iter().map(|e| e.seq).collect();
        assert_eq!(reported, journalled, "{handle}");
    }
    for registry in [&http, &stream] {
        assert_eq!(
            kinds(registry),
            [
                EventKind::MasterStart,
                EventKind::WorkerStart,
                EventKind::WorkerCrash,
                EventKind::WorkerStart,
                EventKind::WorkerExit,
                EventKind::MasterExit,
            ]
        );
        let respawned = lifecycle(registry)[3];
        assert!(
            matches!(respawned.detail, Detail::WorkerStart { replaces: Some(w), .. } if w.pid == killed.pid),
            "{respawned}"
        );
    }
}

/// A reloaded configuration's `lock_timeout` applies, although the new Lua VM's
/// handle shares the registry its process mapped for the previous one.
#[test]
fn a_reopened_registry_takes_the_new_lock_timeout() {
    use std::ffi::{c_char, CStr, CString};
    use worker_manager_ffi::*;

    let scratch = Scratch::new();
    let mut master = common::Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut holder = common::Probe::spawn(&scratch.registry());
    holder.send(&format!("worker-stall {g} 0"));
    holder.wait_for("stalled");
    let path = CString::new(scratch.registry().to_str().unwrap()).unwrap();
    let http = CString::new("http").unwrap();
    let failure_with = |timeout_ms: u64| {
        let mut buf = [0 as c_char; 256];
        let mut len = buf.len();
        let mut h = std::ptr::null_mut();
        // SAFETY: valid C strings, out-parameters and error buffers; the handle is
        // closed before it goes out of scope.
        unsafe {
            let rc = wm_open(
                path.as_ptr(),
                http.as_ptr(),
                timeout_ms,
                &mut h,
                buf.as_mut_ptr(),
                &mut len,
            );
            assert_eq!(rc, WM_OK);
            len = buf.len();
            assert_eq!(wm_lock(h, buf.as_mut_ptr(), &mut len), WM_ERR_LOCK_TIMEOUT);
            let message = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
            (h, message)
        }
    };
    let (first, message) = failure_with(100);
    assert!(message.contains("within 100ms"), "{message}");
    let (second, message) = failure_with(300);
    assert!(message.contains("within 300ms"), "{message}");
    // SAFETY: open handles, not used after.
    unsafe {
        wm_close(first);
        wm_close(second);
    }
    holder.kill9();
}
