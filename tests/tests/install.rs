//! Installation: `make install` by an unprivileged user on a machine without the test
//! suite's packages, and the LuaRocks rock in a real nginx that sees nothing else.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nginx::{serial, signal, start, Config};
use worker_manager::EventKind;

/// Debian's `nobody` and `nogroup`.
const NOBODY: u32 = 65534;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn report(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether `installed` exists with the contents of `original`.
fn same_file(installed: &Path, original: &Path) -> bool {
    fs::read(installed).ok() == Some(fs::read(original).unwrap())
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Run by root in a mount namespace of its own (`unshare`), which it leaves to `nobody`
/// for `make install`. Arguments: the checkout, the Rust toolchain (sysroot), cargo's
/// registry, a directory of nobody's for its build, DESTDIR.
const AS_NOBODY: &str = r#"
set -eu
repo=$1 toolchain=$2 registry=$3 state=$4 dest=$5
# The same paths every run, reachable by nobody (a checkout or a toolchain under /root
# is not), so that nobody's build stays fresh from one run to the next.
mount -t tmpfs -o mode=0755 tmpfs /mnt
mkdir -p /mnt/src /mnt/toolchain /mnt/state /mnt/cargo-home/registry
chown 65534:65534 /mnt/cargo-home
mount --bind "$repo" /mnt/src
mount --bind "$toolchain" /mnt/toolchain
mount --bind "$state" /mnt/state
mount --bind "$registry" /mnt/cargo-home/registry
# The test suite's packages out of sight: nginx, its Lua modules, lua-resty-core.
for dir in /usr/sbin /usr/lib/nginx /usr/share/lua; do
    if [ -d "$dir" ]; then mount -t tmpfs -o mode=0755 tmpfs "$dir"; fi
done
cd /mnt/src
exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i \
    PATH=/mnt/toolchain/bin:/usr/bin:/bin HOME=/mnt/state \
    CARGO_HOME=/mnt/cargo-home CARGO_TARGET_DIR=/mnt/state/target CARGO_NET_OFFLINE=true \
    make install DESTDIR="$dest" PREFIX=/usr/local
"#;

/// `make install DESTDIR=<tmp> PREFIX=/usr/local` run by `nobody`, with no capability,
/// in a mount namespace where nginx, its Lua modules and lua-resty-core are out of
/// sight (tmpfs over `/usr/sbin`, `/usr/lib/nginx`, `/usr/share/lua`): had `install`
/// still checked for the test suite's packages, it would stop there, as nobody may not
/// install them. The checkout, the toolchain and cargo's registry are bind-mounted
/// where nobody reaches them (a checkout under `/root` is out of its reach otherwise),
/// still root's: nobody reads them and writes none of them. It builds in a target
/// directory of its own, kept in the workspace's (`install-test/`), so that only the
/// first run pays for a release build; offline, as root fetched the crates first (as
/// any build of the test suite does). The installed files are checked: exactly the
/// CLI, the library and the two Lua files, owned by nobody; the CLI prints its
/// version, the library loads and says its ABI version, the Lua files are the
/// checkout's.
#[test]
fn make_install_needs_neither_root_nor_the_test_packages() {
    // Serialized with the rock's nginx test, whose harness reaps any child of this
    // process.
    let _serial = serial();
    let cargo = PathBuf::from(std::env::var_os("CARGO").expect("run by cargo"));
    let fetched = Command::new(&cargo)
        .arg("fetch")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        fetched.status.success(),
        "cargo fetch: {}",
        report(&fetched)
    );
    // The toolchain whose cargo runs this test: `<sysroot>/bin/cargo`.
    let toolchain = cargo.parent().and_then(Path::parent).unwrap();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    // This test's executable is `<target>/<profile>/deps/install-<hash>`.
    let exe = std::env::current_exe().unwrap();
    let state = exe.ancestors().nth(3).unwrap().join("install-test");
    fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let dest = tempfile::Builder::new()
        .prefix("wm-install-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dest.path(), Some(NOBODY), Some(NOBODY)).unwrap();

    let installed = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(AS_NOBODY)
        .arg("sh")
        .arg(repo())
        .arg(toolchain)
        .arg(cargo_home.join("registry"))
        .arg(&state)
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "make install as nobody: {}",
        report(&installed)
    );

    let root = dest.path().join("usr/local");
    let bin = Path::new("bin/worker-manager");
    let lib = Path::new("lib/lua/5.1/libworker_manager_ffi.so");
    let lua = ["resty/worker/manager.lua", "resty/worker/manager/cdefs.lua"];
    let mut expected = vec![bin.to_path_buf(), lib.to_path_buf()];
    expected.extend(lua.iter().map(|f| Path::new("share/lua/5.1").join(f)));
    expected.sort();
    assert_eq!(files(&root), expected);
    for file in &expected {
        let meta = fs::metadata(root.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "{file:?}");
    }
    for file in lua {
        let path = root.join("share/lua/5.1").join(file);
        assert!(
            same_file(&path, &repo().join("lib").join(file)),
            "{file} is not the checkout's"
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{file}");
    }

    let version = Command::new(root.join(bin))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success(), "{}", report(&version));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("worker-manager {}", env!("CARGO_PKG_VERSION"))
    );

    let lib = CString::new(root.join(lib).as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path. The library has no initialisers of its own; the
    // handle is never closed.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "the installed library does not load");
    let name = CString::new("wm_abi_version").unwrap();
    // SAFETY: a handle dlopen returned, and a NUL-terminated name.
    let symbol = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(
        !symbol.is_null(),
        "no wm_abi_version in the installed library"
    );
    // SAFETY: the symbol is `uint32_t wm_abi_version(void)` (the C ABI's header).
    let abi_version =
        unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> u32>(symbol) };
    assert_eq!(abi_version(), worker_manager_ffi::WM_ABI_VERSION);
}

/// Reports what the module and its library are in this worker: `status()`'s generation
/// and its running workers, the file the module was loaded from, the library mapped
/// into the process.
const INSTALLED: &str = r#"
        location = /installed {
            content_by_lua_block {
                local wm = require("resty.worker.manager")
                local status = assert(wm.status())
                local running = 0
                for _, w in ipairs(status.workers) do
                    if w.generation == status.generation and w.state == "running" then
                        running = running + 1
                    end
                end
                local lib = "none"
                for line in io.lines("/proc/self/maps") do
                    lib = line:match("(/%S*libworker_manager_ffi%.so)$") or lib
                end
                ngx.say("generation=", status.generation, " running=", running,
                        " module=", debug.getinfo(wm.status, "S").source:sub(2),
                        " lib=", lib)
            }
        }
"#;

/// `luarocks make` of the rockspec into a new tree, then nginx with the synopsis's
/// configuration whose `lua_package_path` and `lua_package_cpath` name that tree alone
/// (and Debian's lua-resty-core, which the Lua module of nginx needs): nginx starts
/// only if the rock installed the module and its library, and `/installed` shows they
/// are the tree's and that the workers registered. The rock builds with cargo in the
/// workspace's target directory (`make build-lib`, run in the checkout), so a fresh
/// release build is reused.
#[test]
fn the_rock_installs_a_module_that_nginx_runs() {
    let _serial = serial();
    let rockspec = repo().join(format!(
        "lua-resty-worker-manager-{}-1.rockspec",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        rockspec.is_file(),
        "{} is missing: the rock's version follows the workspace's",
        rockspec.display()
    );
    let tree_dir = tempfile::Builder::new()
        .prefix("wm-rock-")
        .tempdir()
        .unwrap();
    fs::set_permissions(tree_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tree = tree_dir.path().canonicalize().unwrap();
    // Under `make test`, make's flags would reach the rock's make: not its business.
    let made = Command::new("luarocks")
        .arg("make")
        .arg("--tree")
        .arg(&tree)
        .arg(&rockspec)
        .current_dir(repo())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .expect("luarocks (installed by `make deps`)");
    assert!(made.status.success(), "luarocks make: {}", report(&made));

    let lua_dir = tree.join("share/lua/5.1");
    let lib_dir = tree.join("lib/lua/5.1");
    for file in ["resty/worker/manager.lua", "resty/worker/manager/cdefs.lua"] {
        assert!(
            same_file(&lua_dir.join(file), &repo().join("lib").join(file)),
            "{file} is not the checkout's in the rock's tree"
        );
    }
    let lib = lib_dir.join("libworker_manager_ffi.so");
    assert!(lib.is_file(), "{} is missing", lib.display());

    // Besides the tree: Debian's resty.core, and its cjson, with which the harness's
    // callbacks record events. Neither path holds the module or its library.
    let (nginx, master) = start(&Config {
        lua_paths: Some((
            format!("{}/?.lua;/usr/share/lua/5.1/?.lua", lua_dir.display()),
            format!(
                "{}/?.so;/usr/lib/{}-linux-gnu/lua/5.1/?.so",
                lib_dir.display(),
                std::env::consts::ARCH
            ),
        )),
        locations: INSTALLED.to_string(),
        ..Config::synopsis()
    });
    nginx.wait_n(EventKind::WorkerStart, 2);
    let generation = nginx.named(EventKind::MasterStart)[0].event().generation;
    assert_eq!(
        nginx.get("/installed").trim(),
        format!(
            "generation={generation} running=2 module={} lib={}",
            lua_dir.join("resty/worker/manager.lua").display(),
            lib.display()
        )
    );
    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
}
