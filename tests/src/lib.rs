//! What the probes and the tests share: events as JSON lines, so that the tests read
//! every event a probe (or a Lua callback in nginx) was handed back into a typed
//! [`Event`](worker_manager::Event) and assert on its fields, never on its text.

pub mod json;
