-- resty.worker.manager as a LuaRocks rock: the Lua module and its library,
-- libworker_manager_ffi.so, which cargo builds (`make build-lib`). From a checkout:
--   luarocks make [--tree DIR]
-- The version follows the workspace's (Cargo.toml); a test fails when they differ.
rockspec_format = "3.0"
package = "lua-resty-worker-manager"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/worker-manager/worker-manager.git",
  tag = "v0.1.0",
}
description = {
  summary = "Tracks nginx/OpenResty workers and configuration generations in a crash-safe registry",
  detailed = [[
Tells each callback exactly what is happening to an nginx node: a start, a restart,
a reload, a binary upgrade, a stop, a crash, a respawn. A Rust reimplementation of
Kong's lua-resty-worker-manager, used through LuaJIT's FFI: it needs OpenResty or
nginx with the Lua module, and cargo (Rust 1.75 or newer) to build.
]],
  homepage = "https://github.com/worker-manager/worker-manager",
  license = "Apache-2.0",
}
dependencies = {
  "lua ~> 5.1",
}
build = {
  type = "make",
  build_target = "build-lib",
  install_target = "install-lua",
  -- The Lua files in the rock's Lua directory, the library in its C module
  -- directory, which resty.worker.manager searches (it walks package.cpath).
  install_variables = {
    LUA_LIB_DIR = "$(LUADIR)",
    LUA_CLIB_DIR = "$(LIBDIR)",
  },
}
