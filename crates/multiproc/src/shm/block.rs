//! `Block`: a shared memory region as a handle: cheap to clone, and serializable (its memfd
//! travels as a file descriptor), so every object built on it can be passed to a child.

use std::os::fd::AsFd;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, Fd};
use crate::sys::Region;

/// A shared memory region behind an `Arc`.
#[derive(Debug, Clone)]
pub(crate) struct Block(pub(crate) Arc<Region>);

impl Block {
    /// A new zero-filled anonymous block of at least `len` bytes.
    pub(crate) fn new(name: &str, len: usize) -> std::io::Result<Block> {
        Ok(Block(Arc::new(Region::create(name, len.max(8))?)))
    }
}

impl std::ops::Deref for Block {
    type Target = Region;
    fn deref(&self) -> &Region {
        &self.0
    }
}

impl Serialize for Block {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        codec::serialize_fd(self.0.as_fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let fd = Fd::deserialize(deserializer)?;
        Region::from_fd(fd.into_owned())
            .map(|r| Block(Arc::new(r)))
            .map_err(|e| D::Error::custom(format!("cannot map shared memory: {e}")))
    }
}
