//! The shared-memory region: its layout and its mapping.

pub(crate) mod layout;
pub(crate) mod map;

pub use layout::Capacities;
pub use map::Opened;
