--- The C declarations of libworker_manager_ffi, and how the library is found.
-- The cdef below must declare exactly what ffi/include/worker_manager.h declares
-- (cbindgen output); `cargo test -p worker-manager-ffi` fails when they differ.

local ffi = require("ffi")

local io_open = io.open
local io_close = io.close
local pcall = pcall
local concat = table.concat

ffi.cdef([[
struct wm_handle;
struct wm_event {
  uint64_t seq;
  uint64_t time_ns;
  uint32_t kind;
  uint32_t detail;
  uint64_t generation;
  uint32_t pid;
  int32_t index;
  int32_t n_prev;
  int32_t n_mine;
  int32_t n_next;
  uint32_t other_pid;
  uint32_t flags;
  uint64_t value;
};
struct wm_status {
  uint32_t generations;
  uint32_t workers;
  uint32_t run_state;
  int consistent;
  uint64_t next_seq;
  uint64_t verdict_generation;
  uint32_t verdict;
  uint64_t verdict_ns;
};
struct wm_generation {
  uint64_t id;
  uint32_t state;
  uint32_t kind;
  uint32_t previous_run;
  uint32_t master_pid;
  uint32_t expected_workers;
  uint32_t live_workers;
  uint32_t exit_reason;
  uint64_t workers_started;
  uint64_t respawns;
  uint64_t crashes;
  uint64_t registered_ns;
  uint64_t committed_ns;
};
struct wm_worker {
  uint64_t generation;
  uint32_t pid;
  uint32_t index;
  uint32_t state;
  uint32_t hung;
  uint32_t replaces_pid;
  uint32_t respawns;
  uint64_t heartbeat_age_ms;
  uint64_t registered_ns;
};
uint32_t wm_abi_version(void);
int wm_open(const char *path,
            const char *subsystem,
            uint64_t lock_timeout_ms,
            struct wm_handle **handle,
            char *errbuf,
            size_t *errbuf_len);
void wm_close(struct wm_handle *h);
int wm_lock(struct wm_handle *h, char *errbuf, size_t *errbuf_len);
int wm_try_lock(struct wm_handle *h, int *acquired, char *errbuf, size_t *errbuf_len);
int wm_unlock(struct wm_handle *h, char *errbuf, size_t *errbuf_len);
int wm_register_generation(struct wm_handle *h,
                           uint64_t interval_ms,
                           uint64_t failed_ms,
                           uint64_t start_timeout_ms,
                           uint32_t expected_workers,
                           uint64_t *id,
                           char *errbuf,
                           size_t *errbuf_len);
int wm_configuration_closed(struct wm_handle *h,
                            uint64_t generation,
                            char *errbuf,
                            size_t *errbuf_len);
int wm_register_worker(struct wm_handle *h,
                       uint64_t generation,
                       uint32_t index,
                       char *errbuf,
                       size_t *errbuf_len);
int wm_heartbeat(struct wm_handle *h, char *errbuf, size_t *errbuf_len);
int wm_announce_exit(struct wm_handle *h, char *errbuf, size_t *errbuf_len);
int wm_exit_worker(struct wm_handle *h, int graceful, char *errbuf, size_t *errbuf_len);
int wm_sweep(struct wm_handle *h, char *errbuf, size_t *errbuf_len);
uint32_t wm_events_count(const struct wm_handle *h);
int wm_event_get(struct wm_handle *h,
                 uint32_t i,
                 struct wm_event *out,
                 char *errbuf,
                 size_t *errbuf_len);
int wm_event_done(struct wm_handle *h, uint64_t seq, char *errbuf, size_t *errbuf_len);
void wm_events_clear(struct wm_handle *h);
int wm_snapshot(struct wm_handle *h, struct wm_status *out, char *errbuf, size_t *errbuf_len);
int wm_metrics(struct wm_handle *h,
               const char **text,
               size_t *len,
               char *errbuf,
               size_t *errbuf_len);
int wm_snapshot_generation(struct wm_handle *h,
                           uint32_t i,
                           struct wm_generation *out,
                           char *errbuf,
                           size_t *errbuf_len);
int wm_snapshot_worker(struct wm_handle *h,
                       uint32_t i,
                       struct wm_worker *out,
                       char *errbuf,
                       size_t *errbuf_len);
]])

-- The header's constants that this module uses; `cargo test -p worker-manager-ffi`
-- fails when they differ from ffi/include/worker_manager.h.
local _M = {
  ABI_VERSION = 4,
  -- wm_open: the path no longer names the registry this process has open.
  ERR_REPLACED = 26,
  -- wm_event.flags: delivered again after the process running its callbacks died.
  EVENT_REDELIVERED = 2,
  -- wm_status.verdict: nginx committed the configuration.
  VERDICT_COMMITTED = 1,
  LIB_NAME = "libworker_manager_ffi.so",
}

local function try_load(path)
  local ok, lib = pcall(ffi.load, path)
  if ok then
    return lib
  end
  return nil, lib
end

--- Loads the library: from `path` if given, otherwise from the directories of
-- `package.cpath`, as Kong's Rust-backed libraries are found.
-- @return the library namespace, or nil and an error naming where it looked
function _M.load(path)
  local lib, err
  if path then
    lib, err = try_load(path)
    if not lib then
      return nil, "cannot load " .. path .. ": " .. tostring(err)
    end
  else
    local tried = {}
    for pattern in package.cpath:gmatch("[^;]+") do
      local dir = pattern:match("^(.*/)[^/]*$")
      if dir then
        local candidate = dir .. _M.LIB_NAME
        local f = io_open(candidate, "rb")
        if f then
          io_close(f)
          lib, err = try_load(candidate)
          if lib then
            break
          end
          tried[#tried + 1] = candidate .. " (" .. tostring(err) .. ")"
        else
          tried[#tried + 1] = candidate
        end
      end
    end
    if not lib then
      return nil, _M.LIB_NAME .. " not found; looked in: " .. concat(tried, ", ")
        .. " (install it on package.cpath, or pass the lib option)"
    end
  end
  local version = lib.wm_abi_version()
  if version ~= _M.ABI_VERSION then
    return nil, "the library has ABI version " .. tostring(version)
      .. ", this module needs " .. _M.ABI_VERSION .. ": install matching versions"
  end
  return lib
end

return _M
