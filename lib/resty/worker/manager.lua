--- Tracks nginx workers and configuration generations starting, restarting,
-- reloading, upgrading and stopping, and runs callbacks under a cross-process lock
-- when they do. A drop-in replacement for Kong's lua-resty-worker-manager, backed by
-- the Rust library worker-manager through LuaJIT FFI.
--
-- Every callback gets `(id, n_prev, n_mine, n_next, info)`; see the README.

local ffi = require("ffi")
local bit = require("bit")
local cdefs = require("resty.worker.manager.cdefs")

local ngx = ngx
local ngx_log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local get_phase = ngx.get_phase
local ffi_string = ffi.string
local band = bit.band
local tonumber = tonumber
local tostring = tostring
local type = type
local pairs = pairs
local ipairs = ipairs
local error = error
local xpcall = xpcall
local pcall = pcall
local traceback = debug.traceback
local coroutine_running = coroutine.running

local LOG_PREFIX = "[worker-manager] "

local _M = {
  _VERSION = "0.1.0",
}

local C -- the library, loaded by on_init_by_lua
-- This Lua VM's handle on its registry. Its finalizer runs when nginx closes the VM:
-- in a worker at its real exit, in the master when nginx commits a newer
-- configuration, gives this one up, or exits (see on_vm_end).
local handle

-- Out-parameters, allocated once. Every fallible call writes its message into
-- errbuf, a buffer this module owns, and its length into errlen (its capacity on
-- entry, reset before each call).
local ERRBUF_SIZE = 512
local errbuf = ffi.new("char[?]", ERRBUF_SIZE)
local errlen = ffi.new("size_t[1]")
local handle_out = ffi.new("struct wm_handle *[1]")
local status_out = ffi.new("struct wm_status")
local id_out = ffi.new("uint64_t[1]")
local event_out = ffi.new("struct wm_event")
local generation_out = ffi.new("struct wm_generation")
local worker_out = ffi.new("struct wm_worker")
local crash_loop_out = ffi.new("struct wm_crash_loop")
local leads_out = ffi.new("int[1]")
local term_out = ffi.new("uint64_t[1]")
local word_out = ffi.new("uint64_t[1]")
local leader_out = ffi.new("struct wm_leader")
local text_out = ffi.new("const char *[1]")
local len_out = ffi.new("size_t[1]")
local acquired_out = ffi.new("int[1]")
local code_out = ffi.new("uint32_t[1]")
local PATH_SIZE = 4096
local path_buf = ffi.new("char[?]", PATH_SIZE)
local path_len = ffi.new("size_t[1]")

-- The library's names of its codes, indexed by code, built from the library when it
-- is loaded (see use).
local EVENTS, START_KINDS, RUN_ENDS, REASONS, DETECTIONS, ABORT_CAUSES, LOCK_OPS
local GENERATION_STATES, WORKER_STATES, RUN_STATES, LEADER_CAUSES

-- Option name -> { type, default, minimum, maximum, unit } (numbers are seconds
-- unless a unit says otherwise; a count must be whole).
local OPTIONS = {
  shm = { "string" },
  path = { "string" },
  lib = { "string" },
  interval = { "number", 10, 0.001, 86400 },
  failed = { "number", 5, 0.001, 86400 },
  lock_timeout = { "number", 30, 0.001, 3600 },
  start_timeout = { "number", 60, 0.001, 86400 },
  -- A worker index is in a crash loop when it crashes more than
  -- crash_loop_intensity times within crash_loop_period (0: never).
  crash_loop_intensity = { "number", 5, 0, cdefs.MAX_CRASH_LOOP_INTENSITY, "crashes" },
  crash_loop_period = { "number", 30, 0.001, 86400 },
  -- How often a worker checks, without the lock, whether it gained or lost the
  -- leadership elsewhere than in its own operations.
  leader_check = { "number", 1, 0.001, 86400 },
  -- Accepted for compatibility, without effect: exits are reported at the real
  -- exit whether or not exit_worker_by_lua is wired.
  exit_hook = { "boolean", false },
  on_worker_crash = { "function" },
  on_generation_abort = { "function" },
  on_worker_hang = { "function" },
  on_worker_recover = { "function" },
  on_worker_crash_loop = { "function" },
  on_worker_crash_loop_end = { "function" },
  on_leader_start = { "function" },
  on_leader_stop = { "function" },
}

-- Module state. It is created in the master by init_by_lua and inherited by every
-- worker through fork, together with the library's own state.
local config -- validated options, once on_init_by_lua succeeded
local generation -- this configuration's generation id
local callbacks = {} -- event name -> callback
local registered = false -- this process registered a worker
-- master_process off (a mode for development): nginx closes the Lua VM of a
-- configuration it reloaded long after, in the same process, which serves on; its
-- exits are reported only by on_exit_worker_by_lua.
local single_process = false
local worker_init_called = false
-- Leadership as this worker last saw it: the leader word, and the term it gained
-- the leadership in (nil: it does not lead).
local seen_word
local leading

--- The error buffer, emptied, as the last two arguments of a library call.
local function err_args()
  errlen[0] = ERRBUF_SIZE
  return errbuf, errlen
end

--- The message of the library call that just failed.
local function last_error()
  local n = tonumber(errlen[0])
  if n >= ERRBUF_SIZE then
    return "unknown error"
  end
  return ffi_string(errbuf, n)
end

--- The names `lib` gives the codes of one set (`cdefs.NAMES_*`), by code.
local function names(lib, set)
  local by_code = {}
  local i = 0
  while true do
    local name = lib.wm_name(set, i, code_out, len_out)
    if name == nil then
      return by_code
    end
    by_code[code_out[0]] = ffi_string(name, len_out[0])
    i = i + 1
  end
end

--- Makes `lib` the library of this module: its functions, and its names of codes.
local function use(lib)
  C = lib
  EVENTS = names(lib, cdefs.NAMES_EVENT_KIND)
  START_KINDS = names(lib, cdefs.NAMES_START_KIND)
  RUN_ENDS = names(lib, cdefs.NAMES_RUN_END)
  REASONS = names(lib, cdefs.NAMES_EXIT_REASON)
  DETECTIONS = names(lib, cdefs.NAMES_DETECTION)
  ABORT_CAUSES = names(lib, cdefs.NAMES_ABORT_CAUSE)
  LOCK_OPS = names(lib, cdefs.NAMES_LOCK_OP)
  GENERATION_STATES = names(lib, cdefs.NAMES_GENERATION_STATE)
  WORKER_STATES = names(lib, cdefs.NAMES_WORKER_STATE)
  RUN_STATES = names(lib, cdefs.NAMES_RUN_STATE)
  LEADER_CAUSES = names(lib, cdefs.NAMES_LEADER_CAUSE)
end

local function count(n)
  if n < 0 then
    return nil
  end
  return n
end

--- The `info` table of an event.
local function describe(e)
  local name = EVENTS[e.kind]
  local info = {
    event = name,
    seq = tonumber(e.seq),
    time = tonumber(e.time_ns) / 1e9,
    generation = tonumber(e.generation),
    -- The process that ran this event's callbacks first died before they returned.
    redelivered = band(e.flags, cdefs.EVENT_REDELIVERED) ~= 0,
  }
  if e.index >= 0 then
    info.pid = e.pid
    info.index = e.index
    info.worker = tostring(info.generation) .. "-" .. tostring(e.pid)
  end
  if name == "master_start" then
    info.kind = START_KINDS[e.detail]
    info.master_pid = e.pid
    info.previous_run = RUN_ENDS[tonumber(e.value)]
  elseif name == "worker_start" then
    info.respawn = band(e.flags, cdefs.EVENT_RESPAWN) ~= 0
    if e.other_pid ~= 0 then
      info.replaces = tostring(info.generation) .. "-" .. tostring(e.other_pid)
    end
  elseif name == "worker_exit" or name == "master_exit" then
    info.reason = REASONS[e.detail]
  elseif name == "worker_crash" then
    info.detection = DETECTIONS[e.detail]
    info.held_lock = band(e.flags, cdefs.EVENT_HELD_LOCK) ~= 0
    info.detected_by = e.other_pid
  elseif name == "generation_abort" then
    info.cause = ABORT_CAUSES[e.detail]
  elseif name == "worker_hang" then
    info.silent_for = tonumber(e.value) / 1000
  elseif name == "worker_recover" then
    info.hung_for = tonumber(e.value) / 1000
  elseif name == "lock_recovered" then
    info.holder_pid = e.other_pid
    info.holder_op = LOCK_OPS[e.detail]
  elseif name == "worker_crash_loop" then
    info.crashes = e.detail
    info.period = tonumber(e.value) / 1000
  elseif name == "worker_crash_loop_end" then
    info.lasted = tonumber(e.value) / 1000
  elseif name == "leader_elected" then
    info.term = tonumber(e.value)
    info.cause = LEADER_CAUSES[e.detail]
    info.previous_pid = e.other_pid ~= 0 and e.other_pid or nil
  end
  return info
end

--- Takes the events of the last operations out of the library's buffer.
local function take_events()
  local events = {}
  for i = 0, C.wm_events_count(handle) - 1 do
    if C.wm_event_get(handle, i, event_out, err_args()) == 0 then
      events[#events + 1] = {
        info = describe(event_out),
        n_prev = count(event_out.n_prev),
        n_mine = count(event_out.n_mine),
        n_next = count(event_out.n_next),
      }
    end
  end
  C.wm_events_clear(handle)
  return events
end

local function run_callback(name, cb, ...)
  local ok, err = xpcall(cb, traceback, ...)
  if not ok then
    ngx_log(ERR, LOG_PREFIX, "the ", name, " callback failed: ", err)
  end
end

--- Runs the callback of each event, in order, and records each as done, so that
-- should this process die first, the next locker delivers only the rest again; the
-- caller holds the lock.
local function dispatch(events)
  for _, e in ipairs(events) do
    local info = e.info
    local name = info.event
    local cb = callbacks[name]
    if name == "lock_recovered" then
      ngx_log(WARN, LOG_PREFIX, "process ", info.holder_pid, " died holding the registry lock (",
              info.holder_op, "); the registry was repaired")
    elseif name == "worker_crash" then
      ngx_log(WARN, LOG_PREFIX, "worker ", info.worker, " (index ", info.index,
              ") died without exiting")
    elseif name == "worker_crash_loop" then
      ngx_log(ERR, LOG_PREFIX, "worker index ", info.index, " is in a crash loop: ",
              info.crashes, " crashes within ", info.period, " s")
    elseif name == "worker_crash_loop_end" then
      ngx_log(WARN, LOG_PREFIX, "worker index ", info.index, " left its crash loop after ",
              info.lasted, " s")
    end
    if cb then
      local id = info.worker or info.generation
      if name == "master_start" or name == "master_exit" then
        id = info.generation
      end
      run_callback(name, cb, id, e.n_prev, e.n_mine, e.n_next, info)
    end
    if C.wm_event_done(handle, info.seq, err_args()) ~= 0 then
      ngx_log(ERR, LOG_PREFIX, "recording event ", info.seq, " as done: ", last_error())
    end
  end
end

-- The Lua thread of this process running callbacks under the registry lock, and how
-- deep. The lock is re-entrant per process: a callback that yields (ngx.sleep, a
-- cosocket) while it holds it would let this worker's other threads (a timer, a
-- request) in beside it. They are kept out instead. (coroutine.running() is called
-- only while callbacks run: it stops the JIT, and costs a tick 20 µs.)
local MAIN = {} -- the main thread, which coroutine.running() calls nil
local dispatcher
local dispatching = 0

local function current_thread()
  return coroutine_running() or MAIN
end

local function held_by_another_thread()
  return dispatcher ~= nil and dispatcher ~= current_thread()
end

--- Runs `op` (a library call returning a status, called with the handle first and
-- the error buffer last) under the lock this process has just taken, then the
-- callbacks of the events it produced, still under the lock; then releases it,
-- whatever `op` and the callbacks did. Returns true, or nil and an error.
--- Runs on_leader_start or on_leader_stop if this worker gained or lost the
-- leadership since it last looked: one atomic load when nothing changed.
local function check_leadership()
  if C.wm_leader_word(handle, word_out, err_args()) ~= 0 or word_out[0] == seen_word then
    return
  end
  seen_word = word_out[0]
  if C.wm_leader(handle, leader_out, err_args()) ~= 0 then
    ngx_log(ERR, LOG_PREFIX, "reading the leader: ", last_error())
    return
  end
  local l = leader_out
  local term = tonumber(l.term)
  local mine = l.mine ~= 0
  local info = {
    term = term,
    cause = LEADER_CAUSES[l.cause],
    generation = generation,
    pid = ngx.worker.pid(),
    index = ngx.worker.id(),
  }
  info.worker = tostring(generation) .. "-" .. tostring(info.pid)
  local stop = leading and (not mine or leading ~= term)
  local start = mine and leading ~= term
  for _, change in ipairs({ stop and "leader_stop" or false, start and "leader_start" or false }) do
    if change then
      leading = change == "leader_start" and term or nil
      local cb = config["on_" .. change]
      if cb then
        info.event = change
        run_callback(change, cb, info.worker, count(l.n_prev), count(l.n_mine),
                     count(l.n_next), info)
      end
    end
  end
end

local function run_held(what, op, ...)
  errlen[0] = ERRBUF_SIZE
  local called, rc = pcall(op, handle, ...)
  local err
  if not called then
    err = tostring(rc)
  elseif rc ~= 0 then
    err = last_error()
  end
  local events = take_events()
  local ok, cb_err = true, nil
  if #events > 0 then
    dispatching = dispatching + 1
    dispatcher = current_thread()
    ok, cb_err = pcall(dispatch, events)
    dispatching = dispatching - 1
    if dispatching == 0 then
      dispatcher = nil
    end
  end
  if C.wm_unlock(handle, err_args()) ~= 0 then
    ngx_log(ERR, LOG_PREFIX, "unlock: ", last_error())
  end
  if not ok then
    ngx_log(ERR, LOG_PREFIX, what, ": dispatching events: ", cb_err)
  end
  if registered and dispatching == 0 then
    -- A change this operation made: this worker's own callbacks run at once.
    check_leadership()
  end
  if err then
    ngx_log(ERR, LOG_PREFIX, what, ": ", err)
    return nil, err
  end
  return true
end

local function lock_failed(what)
  local err = last_error()
  take_events()
  ngx_log(ERR, LOG_PREFIX, what, ": ", err)
  return nil, err
end

--- Runs `op` under the registry lock, waiting for it (up to `lock_timeout`), then
-- the callbacks of its events, still under the lock. Never leaves the lock held.
-- Returns true, or nil and an error.
local function locked(what, op, ...)
  if held_by_another_thread() then
    local err = "the registry lock is held by a callback of this worker that yielded "
                .. "(callbacks must not sleep or use cosockets)"
    ngx_log(ERR, LOG_PREFIX, what, ": ", err)
    return nil, err
  end
  if C.wm_lock(handle, err_args()) ~= 0 then
    return lock_failed(what)
  end
  return run_held(what, op, ...)
end

--- As `locked`, but only if the lock is free right now; returns true at once when
-- another process holds it.
local function locked_if_free(what, op, ...)
  if held_by_another_thread() then
    return true
  end
  if C.wm_try_lock(handle, acquired_out, err_args()) ~= 0 then
    return lock_failed(what)
  end
  if acquired_out[0] == 0 then
    return true
  end
  return run_held(what, op, ...)
end

-- lua-nginx-module leaves the request of the last handler it ran (init_worker's
-- fake one) in the VM's main thread, where nothing runs after it but the VM's end:
-- there, ngx.get_phase() read it after it was freed (and crashed the worker), and
-- ngx.log() wrote to its freed connection's log (nothing). Clearing it makes them
-- answer as outside any request: get_phase() "init", log() to the error log.
local exdata_ok, exdata = pcall(require, "thread.exdata")
local NULL = ffi.cast("void *", 0)

local function forget_request()
  if exdata_ok then
    exdata(NULL)
  end
end

--- The end of this Lua VM, the one hook nginx runs whatever happens (short of
-- SIGKILL): it closes the VM in every process that has it. In a worker, that is its
-- real exit, graceful or fast, with or without exit_worker_by_lua. In the master, it
-- is the end of this configuration: nginx committed the next one (before forking
-- its workers), gave this one up after init_by_lua (a port it cannot bind, an error
-- later in init_by_lua), or the master exits.
local function on_vm_end(h)
  forget_request()
  if registered and not single_process then
    registered = false
    local graceful = ngx.worker.exiting() and 1 or 0
    locked("exiting", C.wm_exit_worker, graceful, errbuf, errlen)
  elseif generation and not worker_init_called then
    -- The master (or, for a start that fails, the process about to become it).
    -- ngx.process.type() cannot tell: it crashes when a start fails. A cache
    -- manager or loader gets here too, where closing a committed configuration
    -- finds nothing of its own to commit.
    locked("closing the configuration", C.wm_configuration_closed, generation, errbuf, errlen)
  end
  handle = nil
  C.wm_close(h)
end

local function validate(opts)
  if type(opts) ~= "table" then
    error("opts must be a table, got " .. type(opts), 3)
  end
  local valid = {}
  for name, value in pairs(opts) do
    local spec = OPTIONS[name]
    if not spec then
      error("unknown option '" .. tostring(name) .. "'", 3)
    end
    if type(value) ~= spec[1] then
      error("option '" .. name .. "' must be a " .. spec[1] .. ", got " .. type(value), 3)
    end
    local unit = spec[5] or "seconds"
    if spec[3] and (value < spec[3] or value > spec[4] or value ~= value
                    or (unit ~= "seconds" and value % 1 ~= 0)) then
      error("option '" .. name .. "' must be " .. (unit ~= "seconds" and "a whole number " or "")
            .. "between " .. spec[3] .. " and " .. spec[4] .. " " .. unit
            .. ", got " .. tostring(value), 3)
    end
    valid[name] = value
  end
  for name, spec in pairs(OPTIONS) do
    if valid[name] == nil then
      valid[name] = spec[2]
    end
  end
  if not valid.shm and not valid.path then
    error("option 'shm' or 'path' is required", 3)
  end
  if valid.path and valid.path:sub(1, 1) ~= "/" then
    error("option 'path' must be an absolute path, got '" .. valid.path .. "'", 3)
  end
  for _, name in ipairs({ "path", "lib" }) do
    if valid[name] and valid[name]:find("\0", 1, true) then
      error("option '" .. name .. "' holds a NUL byte", 3)
    end
  end
  return valid
end

--- The registry path `lib` derives for a `shm` name, or nil, an error and its code.
local function derive_path(lib, prefix, shm, subsystem)
  path_len[0] = PATH_SIZE
  local rc = lib.wm_default_path(prefix, shm, #shm, subsystem, path_buf, path_len, err_args())
  if rc ~= 0 then
    return nil, last_error(), rc
  end
  return ffi_string(path_buf, path_len[0])
end

--- The registry path for a `shm` name when no `path` is given: one per nginx prefix,
-- name and subsystem, so that two nginx instances, or the http and stream
-- subsystems of one, never share one. The library derives it: the one
-- on_init_by_lua loaded, or else the one on package.cpath.
-- @param subsystem "http" (the default) or "stream"
-- @return the path, or nil and an error
function _M.default_path(prefix, shm, subsystem)
  local lib = C
  if not lib then
    local load_err
    lib, load_err = cdefs.load()
    if not lib then
      return nil, load_err
    end
  end
  local path, err, rc = derive_path(lib, prefix, shm, subsystem or "http")
  if not path and rc == cdefs.ERR_INVALID_ARGUMENT then
    err = "shm " .. err
  end
  return path, err
end

local function check_callback(name, cb, level)
  if cb ~= nil and type(cb) ~= "function" then
    error(name .. " must be a function or nil, got " .. type(cb), level + 1)
  end
end

local function ms(seconds)
  return seconds * 1000
end

--- Registers this configuration as a new generation. Call it in `init_by_lua`.
-- @param opts options (see the README): `shm` or `path`, `interval`, `failed`,
-- `lock_timeout`, `start_timeout`, `exit_hook`, the `on_*` callbacks, `lib`
-- @param master_start_cb called when this generation registers
-- @param master_exit_cb called when a generation has no worker left
-- @return true, or nil and an error
function _M.on_init_by_lua(opts, master_start_cb, master_exit_cb)
  if get_phase() ~= "init" then
    error("on_init_by_lua must be called in init_by_lua, not in " .. get_phase(), 2)
  end
  if config then
    error("on_init_by_lua was already called", 2)
  end
  local valid = validate(opts)
  check_callback("master_start_cb", master_start_cb, 2)
  check_callback("master_exit_cb", master_exit_cb, 2)

  local lib, err = cdefs.load(valid.lib)
  if not lib then
    ngx_log(ERR, LOG_PREFIX, err)
    return nil, err
  end
  use(lib)
  local subsystem = ngx.config.subsystem or "http"
  local path = valid.path
  if valid.shm then
    local derived, rc
    derived, err, rc = derive_path(C, ngx.config.prefix(), valid.shm, subsystem)
    if not derived then
      if rc == cdefs.ERR_INVALID_ARGUMENT then
        error("option 'shm' " .. err, 2)
      end
      ngx_log(ERR, LOG_PREFIX, err)
      return nil, err
    end
    path = path or derived
  end
  handle_out[0] = nil
  local rc = C.wm_open(path, subsystem, ms(valid.lock_timeout), handle_out, err_args())
  if rc ~= 0 and rc ~= cdefs.ERR_REPLACED then
    err = last_error()
    ngx_log(ERR, LOG_PREFIX, err)
    return nil, err
  end
  handle = ffi.gc(handle_out[0], on_vm_end)
  if rc == cdefs.ERR_REPLACED then
    ngx_log(WARN, LOG_PREFIX, last_error())
  end
  callbacks = {
    master_start = master_start_cb,
    master_exit = master_exit_cb,
    worker_crash = valid.on_worker_crash,
    generation_abort = valid.on_generation_abort,
    worker_hang = valid.on_worker_hang,
    worker_recover = valid.on_worker_recover,
    worker_crash_loop = valid.on_worker_crash_loop,
    worker_crash_loop_end = valid.on_worker_crash_loop_end,
  }
  -- Any of them may run at the end of the Lua VM (see the end of this file).
  for _, cb in pairs(callbacks) do
    jit.off(cb, true)
  end
  local workers = ngx.worker.count and ngx.worker.count() or 0
  local ok
  ok, err = locked("registering the generation", C.wm_register_generation,
                   ms(valid.interval), ms(valid.failed), ms(valid.start_timeout),
                   workers, valid.crash_loop_intensity, ms(valid.crash_loop_period),
                   id_out, errbuf, errlen)
  if not ok then
    -- Closed now, not by its finalizer, which is the end of the VM's tracking.
    C.wm_close(ffi.gc(handle, nil))
    handle = nil
    return nil, err
  end
  generation = tonumber(id_out[0])
  valid.path = path
  config = valid
  return true
end

--- Whether this worker leads the node, and the term, from one atomic load: no
-- lock, no system call (JIT-compiled). A job that must not run twice checks both
-- before each unit of work. False in a process that is no registered worker.
-- @return true or false, and the term (a number that grows at every change)
function _M.is_leader()
  if not registered then
    return false, 0
  end
  errlen[0] = ERRBUF_SIZE
  if C.wm_is_leader(handle, leads_out, term_out, errbuf, errlen) ~= 0 then
    return false, 0
  end
  return leads_out[0] ~= 0, tonumber(term_out[0])
end

--- The node's leader, read without the lock.
-- @return its worker id (`"<generation>-<pid>"`, nil when no worker leads) and the
-- term; or nil, nil and an error
function _M.leader()
  if not C then
    return nil, nil, "on_init_by_lua has not run"
  end
  if C.wm_leader(handle, leader_out, err_args()) ~= 0 then
    return nil, nil, last_error()
  end
  local l = leader_out
  local id
  if l.pid ~= 0 then
    id = tostring(tonumber(l.generation)) .. "-" .. tostring(l.pid)
  end
  return id, tonumber(l.term)
end

--- Records a heartbeat of this worker now, as its timer does every `interval`: for
-- code that keeps the event loop busy for long. No lock, no system call.
-- @return true, or nil and an error
function _M.heartbeat()
  if not registered then
    return nil, "this process has no registered worker"
  end
  errlen[0] = ERRBUF_SIZE
  if C.wm_heartbeat(handle, errbuf, errlen) ~= 0 then
    return nil, last_error()
  end
  return true
end

local function tick(premature)
  if premature then
    -- Graceful shutdown began (reload, upgrade, quit): the process may serve for a
    -- while longer; its exit is reported when it really exits. It leads no more.
    locked("resigning", C.wm_resign, errbuf, errlen)
    -- Its exit callbacks will run at the end of its Lua VM, in a finalizer, where a
    -- loop that LuaJIT compiled earlier can spin forever (measured: a worker stuck
    -- "shutting down" at 100 % CPU), and where compiled code cannot be flushed. It
    -- is flushed here, and the JIT turned off for the little life left.
    jit.flush()
    jit.off()
    return
  end
  local ok, err = _M.heartbeat()
  if not ok then
    ngx_log(ERR, LOG_PREFIX, "heartbeat: ", err)
  end
  -- Only if the lock is free: its holder sweeps as part of whatever it does, or the
  -- next tick will, and a tick never stalls this worker's event loop behind another
  -- process's callback.
  locked_if_free("sweeping", C.wm_sweep, errbuf, errlen)
end

--- Registers this worker. Call it in `init_worker_by_lua`.
-- @param start_cb called once this worker is registered
-- @param exit_cb called when this worker exits
-- @return true, or nil and an error
function _M.on_init_worker_by_lua(start_cb, exit_cb)
  if get_phase() ~= "init_worker" then
    error("on_init_worker_by_lua must be called in init_worker_by_lua, not in "
          .. get_phase(), 2)
  end
  if not config then
    error("on_init_by_lua must be called first (in init_by_lua)", 2)
  end
  if worker_init_called then
    error("on_init_worker_by_lua was already called", 2)
  end
  check_callback("start_cb", start_cb, 2)
  check_callback("exit_cb", exit_cb, 2)
  worker_init_called = true
  local index = ngx.worker.id()
  if not index then
    -- Not a worker (cache manager or loader, privileged agent): nothing to track.
    return true
  end
  callbacks.worker_start = start_cb
  callbacks.worker_exit = exit_cb
  for _, cb in ipairs({ start_cb or false, exit_cb or false, config.on_leader_start or false,
                        config.on_leader_stop or false }) do
    if cb then
      jit.off(cb, true)
    end
  end
  local ok, err = locked("registering the worker", C.wm_register_worker, generation, index,
                         errbuf, errlen)
  if not ok then
    return nil, err
  end
  registered = true
  single_process = require("ngx.process").type() == "single"
  seen_word = nil
  leading = nil
  check_leadership()
  local check_ok, check_err = ngx.timer.every(config.leader_check, function(premature)
    if not premature then
      check_leadership()
    end
  end)
  if not check_ok then
    ngx_log(ERR, LOG_PREFIX, "cannot start the leadership check timer: ", check_err)
  end
  local timer_ok, timer_err = ngx.timer.every(config.interval, tick)
  if not timer_ok then
    ngx_log(ERR, LOG_PREFIX, "cannot start the heartbeat timer: ", timer_err)
    return nil, timer_err
  end
  return true
end

--- Reports this worker's exit now, in `exit_worker_by_lua`. Optional: without it, the
-- exit is reported at the same moment, when nginx closes the worker's Lua VM.
-- @return true, or nil and an error
function _M.on_exit_worker_by_lua()
  if get_phase() ~= "exit_worker" then
    error("on_exit_worker_by_lua must be called in exit_worker_by_lua, not in "
          .. get_phase(), 2)
  end
  if not registered then
    return true
  end
  registered = false
  local graceful = ngx.worker.exiting() and 1 or 0
  return locked("exiting", C.wm_exit_worker, graceful, errbuf, errlen)
end

--- A snapshot of the registry, read without waiting for the lock (under it only
-- inside a callback, where this process holds it): a status page never stalls
-- behind a callback.
-- @return a table `{ run_state, next_seq, consistent, generation, last_verdict,
-- last_success, reloads, reload_failures, crash_loops = {...},
-- generations = {...}, workers = {...} }`, or nil and an error
function _M.status()
  if not C then
    return nil, "on_init_by_lua has not run"
  end
  if C.wm_snapshot(handle, status_out, err_args()) ~= 0 then
    return nil, last_error()
  end
  local st = status_out
  local status = {
    run_state = RUN_STATES[st.run_state],
    next_seq = tonumber(st.next_seq),
    -- false only when a writer died in the middle of a change
    consistent = st.consistent ~= 0,
    generation = generation,
    generations = {},
    workers = {},
    crash_loops = {},
    reloads = tonumber(st.reload_verdicts),
    reload_failures = tonumber(st.reload_failures),
    last_success = st.last_success_ns ~= 0 and tonumber(st.last_success_ns) / 1e9 or nil,
  }
  if st.verdict_generation ~= 0 then
    status.last_verdict = {
      generation = tonumber(st.verdict_generation),
      committed = st.verdict == cdefs.VERDICT_COMMITTED,
      time = tonumber(st.verdict_ns) / 1e9,
    }
  end
  for i = 0, st.generations - 1 do
    if C.wm_snapshot_generation(handle, i, generation_out, err_args()) == 0 then
      local g = generation_out
      status.generations[#status.generations + 1] = {
        id = tonumber(g.id),
        state = GENERATION_STATES[g.state],
        kind = START_KINDS[g.kind],
        previous_run = RUN_ENDS[g.previous_run],
        master_pid = g.master_pid,
        expected_workers = g.expected_workers,
        live_workers = g.live_workers,
        exit_reason = REASONS[g.exit_reason],
        workers_started = tonumber(g.workers_started),
        respawns = tonumber(g.respawns),
        crashes = tonumber(g.crashes),
        registered = tonumber(g.registered_ns) / 1e9,
        committed = g.committed_ns ~= 0 and tonumber(g.committed_ns) / 1e9 or nil,
      }
    end
  end
  for i = 0, st.workers - 1 do
    if C.wm_snapshot_worker(handle, i, worker_out, err_args()) == 0 then
      local w = worker_out
      status.workers[#status.workers + 1] = {
        id = tostring(tonumber(w.generation)) .. "-" .. tostring(w.pid),
        generation = tonumber(w.generation),
        pid = w.pid,
        index = w.index,
        state = WORKER_STATES[w.state],
        hung = w.hung == 1,
        replaces_pid = w.replaces_pid ~= 0 and w.replaces_pid or nil,
        respawns = w.respawns,
        heartbeat_age = tonumber(w.heartbeat_age_ms) / 1000,
        registered = tonumber(w.registered_ns) / 1e9,
      }
    end
  end
  for i = 0, st.crash_loops - 1 do
    if C.wm_snapshot_crash_loop(handle, i, crash_loop_out, err_args()) == 0 then
      local l = crash_loop_out
      status.crash_loops[#status.crash_loops + 1] = {
        index = l.index,
        last_crashed = tostring(tonumber(l.last_generation)) .. "-" .. tostring(l.last_pid),
        recent_crashes = l.recent_crashes,
        since = tonumber(l.since_ns) / 1e9,
      }
    end
  end
  return status
end

--- The registry in the Prometheus text exposition format (the same text as
-- `worker-manager metrics`), read without the registry lock: a scrape never waits
-- behind a callback. Serve it from a `location` for Prometheus to scrape.
-- @return the text, or nil and an error
function _M.metrics()
  if not C then
    return nil, "on_init_by_lua has not run"
  end
  if C.wm_metrics(handle, text_out, len_out, err_args()) ~= 0 then
    return nil, last_error()
  end
  return ffi_string(text_out[0], len_out[0])
end

-- What runs at the end of a Lua VM (a worker's exit without exit_worker_by_lua, a
-- master closing a configuration) runs in a finalizer, where LuaJIT cannot flush
-- compiled code and where a compiled loop can spin forever: none of it is compiled.
for _, f in ipairs({ describe, take_events, dispatch, run_callback, check_leadership,
                     run_held, locked, on_vm_end }) do
  jit.off(f, true)
end

return _M
