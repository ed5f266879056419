//! The shared-memory region: its layout and its mapping.

pub(crate) mod layout;
#[allow(unsafe_code)]
pub(crate) mod map;

pub use layout::Capacities;
pub use map::Opened;
