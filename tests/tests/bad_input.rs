//! Every bad registry file and argument gives a clear error naming its cause, and
//! changes nothing.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{patch_header, HeaderField, Probe, Scratch, Tmpfs};
use worker_manager::{Capacities, Error, GenerationConfig, Observer, Options, Registry};

fn open(path: &Path) -> Result<Registry, Error> {
    Registry::open(path, &Options::default())
}

/// Creates a valid registry, then overwrites `field` of its header with `value`.
fn patched(scratch: &Scratch, field: HeaderField, value: u32) -> std::path::PathBuf {
    let path = scratch.registry();
    drop(open(&path).unwrap());
    patch_header(&path, field, value);
    path
}

#[test]
fn a_short_file_is_truncated() {
    let scratch = Scratch::new();
    let path = scratch.registry();
    fs::write(&path, [7u8; 100]).unwrap();
    let err = open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                len: 100,
                expected: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is truncated: 100 bytes"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), [7u8; 100], "nothing changed");

    // A real registry cut short.
    drop(fs::remove_file(&path));
    drop(open(&path).unwrap());
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(5000).unwrap();
    let err = open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                len: 5000,
                expected: 405504,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_zero_filled_file_is_not_initialised() {
    let scratch = Scratch::new();
    let path = scratch.registry();
    fs::write(&path, vec![0u8; 300_000]).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, Error::NotInitialised { .. }), "{err}");
    assert!(err.to_string().contains("remove it"), "{err}");
}

#[test]
fn a_foreign_file_is_refused() {
    let scratch = Scratch::new();
    let path = scratch.registry();
    fs::write(&path, "this is somebody's notes\n".repeat(400)).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, Error::ForeignMagic { .. }), "{err}");
    assert!(
        err.to_string().contains("not a worker-manager registry"),
        "{err}"
    );
}

#[test]
fn newer_and_older_layouts_are_refused() {
    let scratch = Scratch::new();
    let path = patched(&scratch, HeaderField::LayoutVersion, 4);
    let err = open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NewerLayout {
                found: 4,
                supported: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("remove it or upgrade"), "{err}");

    let scratch = Scratch::new();
    // Version 2: the layout before the crash histories.
    let path = patched(&scratch, HeaderField::LayoutVersion, 2);
    assert!(matches!(
        open(&path).unwrap_err(),
        Error::OlderLayout { found: 2, .. }
    ));
}

#[test]
fn another_geometry_is_refused() {
    let scratch = Scratch::new();
    let path = patched(&scratch, HeaderField::RecordSize, 256);
    let err = open(&path).unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("record size is 256"), "{err}");
    // An absurd capacity.
    let scratch = Scratch::new();
    let path = patched(&scratch, HeaderField::CapWorkers, u32::MAX);
    let err = open(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("workers capacity 4294967295 is out of range"),
        "{err}"
    );
    // A capacity in range, but the total no longer matches.
    let scratch = Scratch::new();
    let path = patched(&scratch, HeaderField::CapEvents, 7);
    let err = open(&path).unwrap_err();
    assert!(err.to_string().contains("its capacities need"), "{err}");
}

#[test]
fn a_symlink_is_never_followed() {
    let scratch = Scratch::new();
    let target = scratch.path("target.wm");
    drop(open(&target).unwrap());
    let link = scratch.registry();
    symlink(&target, &link).unwrap();
    let err = open(&link).unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[test]
fn a_file_of_another_user_or_writable_by_all_is_refused() {
    let scratch = Scratch::new();
    let path = scratch.registry();
    drop(open(&path).unwrap());
    let status = Command::new("chown")
        .arg("nobody")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "chown needs root, as the test suite runs");
    let err = open(&path).unwrap_err();
    assert!(matches!(err, Error::ForeignOwner { euid: 0, .. }), "{err}");
    assert!(err.to_string().contains("is owned by uid 65534"), "{err}");

    let scratch = Scratch::new();
    let path = scratch.registry();
    drop(open(&path).unwrap());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let err = open(&path).unwrap_err();
    assert!(
        matches!(err, Error::WorldWritable { mode: 0o666, .. }),
        "{err}"
    );
}

#[test]
fn missing_directories_and_directories_are_named() {
    let scratch = Scratch::new();
    let err = open(&scratch.path("no/such/dir/registry.wm")).unwrap_err();
    assert!(err.to_string().contains("open failed"), "{err}");
    assert!(err.to_string().contains("no/such/dir/registry.wm"), "{err}");
    fs::create_dir(scratch.registry()).unwrap();
    let err = open(&scratch.registry()).unwrap_err();
    assert!(err.to_string().contains("Is a directory"), "{err}");
}

#[test]
fn bad_arguments_are_named() {
    let scratch = Scratch::new();
    let options = Options {
        capacities: Capacities {
            workers: 0,
            ..Capacities::default()
        },
        ..Options::default()
    };
    let err = Registry::open(scratch.registry(), &options).unwrap_err();
    assert!(
        err.to_string().contains("invalid workers: capacity 0"),
        "{err}"
    );
    assert!(!scratch.registry().exists() || fs::metadata(scratch.registry()).unwrap().len() == 0);

    let registry = open(&scratch.path("ok.wm")).unwrap();
    let config = GenerationConfig {
        interval: std::time::Duration::ZERO,
        ..GenerationConfig::default()
    };
    let err = registry.register_generation(&config, |_| {}).unwrap_err();
    assert!(err.to_string().contains("invalid interval"), "{err}");
    let err = registry.register_worker(99, 0, |_| {}).unwrap_err();
    assert!(matches!(err, Error::UnknownGeneration(99)), "{err}");
}

#[test]
fn full_tables_are_errors_that_change_nothing() {
    let scratch = Scratch::new();
    let options = Options {
        capacities: Capacities {
            generations: 2,
            workers: 2,
            events: 4,
        },
        ..Options::default()
    };
    let registry = Registry::open(scratch.registry(), &options).unwrap();
    let g1 = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap();
    let mut a = Probe::spawn(&scratch.registry());
    a.worker(g1, 0);
    let mut b = Probe::spawn(&scratch.registry());
    b.worker(g1, 1);
    let mut c = Probe::spawn(&scratch.registry());
    let err = c.cmd(&format!("worker {g1} 2")).unwrap_err();
    assert!(err.contains("all 2 worker slots are in use"), "{err}");

    let g2 = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap();
    b.ok("exit graceful");
    c.worker(g2, 0);
    let err = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapacityExhausted {
                what: "generation",
                capacity: 2
            }
        ),
        "{err}"
    );
    let snapshot = registry.snapshot().unwrap();
    assert_eq!(snapshot.live(g1), 1);
    assert_eq!(snapshot.live(g2), 1);
    assert_eq!(snapshot.generations.len(), 2);

    // The 4-entry journal wrapped: the newest 4 events, in order.
    let events = registry.events_since(0);
    assert_eq!(events.len(), 4);
    assert!(events.windows(2).all(|p| p[1].seq == p[0].seq + 1));
    assert_eq!(events[3].seq + 1, snapshot.next_seq);
}

#[test]
fn a_full_file_system_is_no_space_at_creation() {
    let scratch = Scratch::new();
    let dir = scratch.path("tiny");
    let _tiny = Tmpfs::mount(&dir, "size=64k");
    let err = open(&dir.join("registry.wm")).unwrap_err();
    assert!(matches!(err, Error::NoSpace { bytes: 405504, .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no space left to reserve 405504 bytes"),
        "{err}"
    );
    // The empty file left behind is created properly once there is room.
    assert_eq!(fs::metadata(dir.join("registry.wm")).unwrap().len(), 0);
    let small = Options {
        capacities: Capacities {
            generations: 4,
            workers: 16,
            events: 16,
        },
        ..Options::default()
    };
    let registry = Registry::open(dir.join("registry.wm"), &small).unwrap();
    assert_eq!(registry.capacities(), small.capacities);
}

#[test]
fn a_file_removed_or_replaced_while_open_is_noticed_and_the_mapping_kept() {
    let scratch = Scratch::new();
    let registry = scratch.open();
    assert!(registry.is_at_path());
    let kept = scratch.path("kept.wm");
    fs::rename(scratch.registry(), &kept).unwrap();
    assert!(!registry.is_at_path(), "removed");
    fs::write(scratch.registry(), [0u8; 4096]).unwrap();
    assert!(!registry.is_at_path(), "replaced");
    let generation = registry
        .register_generation(&GenerationConfig::default(), |_| {})
        .unwrap();
    fs::remove_file(scratch.registry()).unwrap();
    fs::rename(&kept, scratch.registry()).unwrap();
    assert!(registry.is_at_path(), "back in place");
    let snapshot = Observer::open(scratch.registry()).unwrap().snapshot();
    assert_eq!(snapshot.generations[0].id, generation);
}
