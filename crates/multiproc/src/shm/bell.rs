//! `Bell`: the doorbell of a shared-memory structure (a queue's ring, an event), for waiters
//! that sleep in a reactor or in `poll` rather than on a futex.
//!
//! The bell is an eventfd that travels with the structure. It costs its users nothing while
//! nobody watches it: a shared word counts the watchers (async waiters, plus one bit that
//! stays set once the descriptor was handed out for `poll`), and a change is rung only while
//! it is not zero.
//!
//! # Why no change is missed
//! A watcher adds itself to the word, then (`SeqCst`) looks at the structure; a changer
//! publishes its change, then (`SeqCst` fence) reads the word. Of the two orders, either the
//! watcher's look sees the change, or the changer sees the watcher and rings. A ring is an
//! edge for every reactor watching the bell (epoll reports each write to an eventfd), so async
//! waiters never need to empty it; `poll` users get a level ("something may have changed"),
//! which [`Bell::quiet`] resets when the structure is found with nothing to take.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, Fd};
use crate::sys;

/// Set in the watchers word once the bell was handed out for `poll`: rung for good.
const POLLED: u32 = 1 << 31;

/// A structure's doorbell (see the module docs). Clones share the descriptor.
#[derive(Debug, Clone)]
pub(crate) struct Bell {
    fd: Arc<OwnedFd>,
    #[cfg(feature = "tokio")]
    watch: Arc<crate::aio::LazyWatch>,
}

impl Bell {
    pub(crate) fn new() -> io::Result<Bell> {
        Ok(Bell::from_fd(sys::doorbell()?))
    }

    fn from_fd(fd: OwnedFd) -> Bell {
        Bell {
            fd: Arc::new(fd),
            #[cfg(feature = "tokio")]
            watch: Arc::default(),
        }
    }

    /// After publishing a change (the caller's `SeqCst` fence or read-modify-write comes
    /// first): rings if anyone watches.
    pub(crate) fn ring_if_watched(&self, watchers: &AtomicU32) {
        if watchers.load(Ordering::SeqCst) != 0 {
            sys::ring_doorbell(self.fd.as_fd());
        }
    }

    /// The descriptor for `poll` (`multiproc::wait`): from now on every change rings it, in
    /// every process.
    pub(crate) fn for_poll(&self, watchers: &AtomicU32) -> BorrowedFd<'_> {
        watchers.fetch_or(POLLED, Ordering::SeqCst);
        self.fd.as_fd()
    }

    /// Found nothing to take: silences the bell for `poll` users, then rings it again if
    /// `still()` says there is something after all (a change between the look and the
    /// silencing).
    pub(crate) fn quiet(&self, watchers: &AtomicU32, still: impl Fn() -> bool) {
        if watchers.load(Ordering::Relaxed) & POLLED != 0 {
            sys::silence_doorbell(self.fd.as_fd());
            std::sync::atomic::fence(Ordering::SeqCst);
            if still() {
                sys::ring_doorbell(self.fd.as_fd());
            }
        }
    }

    /// Runs `op` (a try that does not wait: `Pending` when there is nothing yet) until it is
    /// ready, sleeping in the runtime's reactor on the bell in between. Registered as a
    /// watcher only once a first try failed, so a ready `op` costs nothing more.
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_until<R>(
        &self,
        watchers: &AtomicU32,
        mut op: impl FnMut() -> std::task::Poll<R>,
    ) -> io::Result<R> {
        if let std::task::Poll::Ready(r) = op() {
            return Ok(r);
        }
        /// Counted as a watcher while alive (a dropped future stops counting).
        struct Watching<'a>(&'a AtomicU32);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        watchers.fetch_add(1, Ordering::SeqCst);
        let _watching = Watching(watchers);
        let watch = self.watch.get(self.fd.as_fd())?;
        // `readable` tries `op` once more before it sleeps: after registering, as the module
        // docs require.
        watch.readable(op).await
    }
}

impl Serialize for Bell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        codec::serialize_fd(self.fd.as_fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for Bell {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Bell::from_fd(Fd::deserialize(deserializer)?.into_owned()))
    }
}
