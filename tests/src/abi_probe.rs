//! `wm-abi-probe HTTP_REGISTRY HTTP_GEN STREAM_REGISTRY STREAM_GEN`: one process that
//! is a worker of two subsystems at once, as an nginx worker with http and stream
//! Lua is: two handles through the C ABI, one per registry, each registering this
//! process as worker 0 of its generation. Prints `ready <pid>`, then on stdin:
//! `exit` (both handles report a graceful exit and close, each printing its events,
//! then `ok`), or nothing until it is killed. An event is one line of JSON: the
//! handle's subsystem as `handle`, the event's name as `event`, and the fields of
//! its `wm_event` (`seq`, `generation`, `pid`, `index`, `n_mine`) under their C
//! names.

use std::ffi::{c_char, CString};
use std::io::{self, BufRead, Write};
use std::ptr;

use serde_json::json;
use worker_manager::EventKind;
use worker_manager_ffi::*;

fn fail(what: &str, rc: i32, buf: &[c_char]) -> ! {
    let text: Vec<u8> = buf
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8)
        .collect();
    println!("err {what}: {rc} {}", String::from_utf8_lossy(&text));
    std::process::exit(1);
}

/// Opens a handle on `path` for `subsystem` and registers this process as worker 0
/// of `generation`.
fn worker(path: &str, subsystem: &str, generation: u64) -> *mut wm_handle {
    let mut buf = [0 as c_char; 256];
    let mut len = buf.len();
    let (path, subsystem) = (
        CString::new(path).unwrap(),
        CString::new(subsystem).unwrap(),
    );
    let mut h = ptr::null_mut();
    // SAFETY: valid C strings, out-parameter and error buffer.
    let rc = unsafe {
        wm_open(
            path.as_ptr(),
            subsystem.as_ptr(),
            5000,
            &mut h,
            buf.as_mut_ptr(),
            &mut len,
        )
    };
    if rc != WM_OK {
        fail("open", rc, &buf);
    }
    len = buf.len();
    // SAFETY: an open handle and a valid error buffer.
    let rc = unsafe { wm_register_worker(h, generation, 0, buf.as_mut_ptr(), &mut len) };
    if rc != WM_OK {
        fail("register", rc, &buf);
    }
    h
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: wm-abi-probe HTTP_REGISTRY HTTP_GEN STREAM_REGISTRY STREAM_GEN");
        std::process::exit(2);
    }
    let generation = |i: usize| args[i].parse::<u64>().expect("a generation id");
    let handles = [
        ("http", worker(&args[1], "http", generation(2))),
        ("stream", worker(&args[3], "stream", generation(4))),
    ];
    println!("ready {}", std::process::id());
    let _ = io::stdout().flush();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "exit" {
            continue;
        }
        for (name, h) in handles {
            let mut buf = [0 as c_char; 256];
            let mut len = buf.len();
            // SAFETY: an open handle and a valid error buffer.
            let rc = unsafe { wm_exit_worker(h, 1, buf.as_mut_ptr(), &mut len) };
            if rc != WM_OK {
                fail("exit", rc, &buf);
            }
            // SAFETY: an open handle; it is not used after `wm_close`.
            unsafe {
                for i in 0..wm_events_count(h) {
                    let mut e = wm_event::default();
                    wm_event_get(h, i, &mut e, ptr::null_mut(), ptr::null_mut());
                    let line = json!({
                        "handle": name,
                        "event": EventKind::from_code(e.kind).map(EventKind::as_str),
                        "seq": e.seq,
                        "generation": e.generation,
                        "pid": e.pid,
                        "index": e.index,
                        "n_mine": e.n_mine,
                    });
                    println!("{line}");
                }
                wm_close(h);
            }
        }
        println!("ok");
        let _ = io::stdout().flush();
        break;
    }
}
