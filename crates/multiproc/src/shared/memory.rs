//! `SharedMemory`: raw bytes shared by processes, anonymous or named.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::process::tracker;
use crate::shm::Block;
use crate::sys::Region;

/// A block of bytes shared by processes (Python's `multiprocessing.shared_memory`).
///
/// - [`SharedMemory::new`]: anonymous (a memfd). Pass it to children as an argument or through
///   a connection; it is freed when the last handle and mapping are gone, in any process, even
///   after `SIGKILL`: nothing can leak.
/// - [`SharedMemory::create`] / [`SharedMemory::open`]: named, in `/dev/shm`, for processes
///   that did not start each other. The creating handle unlinks the name when dropped; if
///   the creator ends without dropping it (killed, `_exit`), the name is unlinked once every
///   process of its tree has ended (the tree's tracker, as Python's resource tracker).
///
/// ```
/// let shm = multiproc::SharedMemory::new(4096)?;
/// shm.write(0, b"hello")?;
/// let mut buf = [0u8; 5];
/// shm.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedMemory {
    block: Block,
    #[serde(skip)]
    name: Option<Arc<Name>>,
}

/// A name this process created, unlinked when the last handle of the creator goes away.
#[derive(Debug)]
struct Name {
    name: String,
    owner: bool,
}

impl Drop for Name {
    fn drop(&mut self) {
        if self.owner {
            let _ = Region::unlink_named(&self.name);
            tracker::unregister(&self.name);
        }
    }
}

fn shm_name(name: &str) -> Result<String, SyncError> {
    let bare = name.trim_start_matches('/');
    if bare.is_empty() || bare.contains('/') || bare.len() > 250 {
        return Err(SyncError::Invalid(format!(
            "bad shared memory name `{name}`"
        )));
    }
    Ok(format!("/{bare}"))
}

impl SharedMemory {
    /// Anonymous shared memory of `size` bytes, zero-filled.
    pub fn new(size: usize) -> Result<SharedMemory, SyncError> {
        if size == 0 {
            return Err(SyncError::Invalid("shared memory of size 0".into()));
        }
        Ok(SharedMemory {
            block: Block(Arc::new(Region::create("multiproc-shm", size)?)),
            name: None,
        })
    }

    /// Named shared memory of `size` bytes; fails if the name exists. This handle owns the
    /// name: dropping it (and its clones) unlinks it.
    pub fn create(name: &str, size: usize) -> Result<SharedMemory, SyncError> {
        if size == 0 {
            return Err(SyncError::Invalid("shared memory of size 0".into()));
        }
        let name = shm_name(name)?;
        let region = Region::create_named(&name, size)?;
        // Unlinked by the tree's tracker should this process end without dropping it.
        tracker::register(&name);
        Ok(SharedMemory {
            block: Block(Arc::new(region)),
            name: Some(Arc::new(Name { name, owner: true })),
        })
    }

    /// Attaches to named shared memory. A missing name is [`SyncError::Io`] with
    /// `NotFound`.
    pub fn open(name: &str) -> Result<SharedMemory, SyncError> {
        let name = shm_name(name)?;
        let region = Region::open_named(&name)?;
        Ok(SharedMemory {
            block: Block(Arc::new(region)),
            name: Some(Arc::new(Name { name, owner: false })),
        })
    }

    /// Attaches to named shared memory that must be exactly `size` bytes
    /// ([`SyncError::Invalid`] otherwise).
    pub fn open_sized(name: &str, size: usize) -> Result<SharedMemory, SyncError> {
        let shm = SharedMemory::open(name)?;
        if shm.size() != size {
            return Err(SyncError::Invalid(format!(
                "shared memory `{name}` is {} bytes, not {size}",
                shm.size()
            )));
        }
        Ok(shm)
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.block.len()
    }

    /// The name, for named memory.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(|n| n.name.as_str())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), SyncError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(SyncError::Invalid(format!(
                "range {offset}+{len} outside {} bytes",
                self.size()
            )));
        }
        Ok(())
    }

    /// Copies bytes out, from `offset`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SyncError> {
        self.check(offset, buf.len())?;
        self.block.read(offset, buf);
        Ok(())
    }

    /// Copies bytes in, at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), SyncError> {
        self.check(offset, data.len())?;
        self.block.write(offset, data);
        Ok(())
    }

    /// Removes the name now (mappings stay valid; new `open`s fail).
    pub fn unlink(&self) -> Result<(), SyncError> {
        match &self.name {
            Some(n) => {
                Region::unlink_named(&n.name)?;
                if n.owner {
                    tracker::unregister(&n.name);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The memory file behind the segment, to map it yourself (`mmap` it shared) or pass it on.
impl std::os::fd::AsFd for SharedMemory {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.block.0.as_fd()
    }
}
