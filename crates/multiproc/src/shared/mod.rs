//! Shared memory: [`SharedMemory`] (raw bytes), [`Value`] and [`Array`] (plain data).

mod memory;
pub(crate) mod tracker;
mod value;

pub use memory::SharedMemory;
pub use value::{Array, Value};
