//! The messages between a pool and its workers: chunks to run (parent to worker) and what came
//! of them (worker to parent, through the report ring).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::progress::Clock;
use crate::process::Outcome;

/// Encoded values back to back, with where each one ends: one buffer for a whole chunk
/// instead of an allocation per item.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) data: ByteBuf,
    pub(crate) ends: Vec<u32>,
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Items `from..to` as a batch of their own.
    pub(crate) fn slice(&self, from: usize, to: usize) -> Batch {
        let base = if from == 0 { 0 } else { self.ends[from - 1] };
        let end = if to == 0 { 0 } else { self.ends[to - 1] };
        Batch {
            data: ByteBuf::from(self.data[base as usize..end as usize].to_vec()),
            ends: self.ends[from..to].iter().map(|e| e - base).collect(),
        }
    }

    /// Item `i`'s bytes.
    pub(crate) fn item(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `function` on each item of `args`, keeping each finished item in the progress area;
    /// report the results together.
    Run {
        /// The chunk's number, unique in the pool (see [`Progress`]).
        seq: u64,
        job: u64,
        start: u64,
        function: String,
        args: Batch,
        clock: Clock,
    },
    /// Finish and exit.
    Exit,
}

/// [`ToWorker::Run`] borrowing its chunk: it encodes to the same bytes, so a chunk is sent
/// without being copied into a message first.
#[derive(Debug, Serialize)]
pub(crate) enum RunRef<'a> {
    Run {
        seq: u64,
        job: u64,
        start: u64,
        function: &'a str,
        args: &'a Batch,
        clock: Clock,
    },
}

/// Why an item has no result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The task panicked, its argument or result did not go through the codec, or it could
    /// not run.
    Task(Outcome),
    /// The task left its worker unable to go on (it closed the worker's connection).
    BrokeWorker(String),
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer (if any) ran; tasks are welcome.
    Ready,
    /// The initializer failed; the worker exits.
    InitFailed(String),
    /// The results of items `start..start + results.len()` of a job, in argument order; the
    /// items that failed have an empty slot in `results` and their story in `failures`. Goes
    /// through the report ring. A chunk is reported in one or more of these; `last` marks the
    /// one that ends it.
    Done {
        job: u64,
        start: u64,
        results: Batch,
        failures: Vec<(u32, Failure)>,
        last: bool,
    },
    /// Reports are waiting in the ring and the handler sleeps: wake up.
    Wake,
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_borrowed_run_message_encodes_as_the_owned_one() {
        let args = Batch {
            data: ByteBuf::from(vec![1, 2, 3]),
            ends: vec![1, 3],
        };
        let owned = ToWorker::Run {
            seq: 7,
            job: 3,
            start: 40,
            function: "f".into(),
            args: args.clone(),
            clock: Clock::PerItem,
        };
        let borrowed = RunRef::Run {
            seq: 7,
            job: 3,
            start: 40,
            function: "f",
            args: &args,
            clock: Clock::PerItem,
        };
        assert_eq!(
            crate::codec::encode(&owned).unwrap(),
            crate::codec::encode(&borrowed).unwrap()
        );
    }
}
