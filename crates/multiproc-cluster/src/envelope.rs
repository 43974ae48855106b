//! What travels through Redis: tasks and replies, encoded with postcard and signed with
//! HMAC-SHA256 under the authkey, and the keys they live under.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use multiproc::CodecError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::TaskFailure;

type HmacSha256 = Hmac<sha2::Sha256>;

/// A chunk of items of one function, as a client submits it.
///
/// Everything a worker acts on is inside the signature: who asked (`client`, `queue`), which
/// task and which submission of it (`id`, `attempt`), until when it may start (`expires_ms`),
/// and what to run. A copy of the entry therefore names the same task, and a worker refuses
/// to start a task twice (see the worker's claim) or after its expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Task {
    /// The client's id: where the reply goes.
    pub client: String,
    /// The queue the task was submitted to.
    pub queue: String,
    /// Unique within the client.
    pub id: u64,
    /// Which submission of the task: 0, then 1, 2, ... when the client resubmits a task the
    /// broker lost.
    pub attempt: u32,
    /// No worker may start the task after this time (milliseconds since the epoch, by the
    /// broker's clock).
    pub expires_ms: u64,
    /// The function's registered name.
    pub function: String,
    /// Each item's encoded arguments.
    pub items: Vec<ByteBuf>,
    /// Per-item time limit.
    pub timeout_ms: Option<u64>,
}

/// What a worker tells a client about one of its tasks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    /// The client it answers (a reply on another client's stream is rejected there).
    pub client: String,
    /// The task it answers.
    pub task: u64,
    /// The submission of the task that ran (or was refused).
    pub attempt: u32,
    pub body: ReplyBody,
}

/// The outcome of a task, or why a copy of it was refused.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReplyBody {
    /// Each item's encoded result, or the failure of the whole task.
    Done(Result<Vec<Result<ByteBuf, TaskFailure>>, TaskFailure>),
    /// An entry of this task was refused and not run (a replayed copy, or expired).
    Refused(String),
}

/// Stream field names.
pub(crate) const PAYLOAD: &str = "p";
pub(crate) const SIGNATURE: &str = "s";

/// What a signature is for: a task's signature does not verify as a reply's, and the other
/// way round.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Task,
    Reply,
}

impl Kind {
    fn domain(self) -> &'static [u8] {
        match self {
            Kind::Task => b"multiproc-cluster task\0",
            Kind::Reply => b"multiproc-cluster reply\0",
        }
    }
}

/// Encodes and signs `value` as a `kind`: (payload, tag).
pub(crate) fn seal<T: Serialize>(
    key: &[u8],
    kind: Kind,
    value: &T,
) -> Result<(Vec<u8>, Vec<u8>), CodecError> {
    let payload = multiproc::codec::encode(value)?;
    let tag = mac(key, kind, &payload).finalize().into_bytes().to_vec();
    Ok((payload, tag))
}

/// Checks the tag of a `kind` and decodes; `Err` says why the entry is rejected.
pub(crate) fn open<T: DeserializeOwned>(
    key: &[u8],
    kind: Kind,
    payload: Option<&[u8]>,
    tag: Option<&[u8]>,
) -> Result<T, String> {
    let (payload, tag) = match (payload, tag) {
        (Some(p), Some(t)) => (p, t),
        _ => return Err("unsigned entry (no payload or no signature)".into()),
    };
    mac(key, kind, payload)
        .verify_slice(tag)
        .map_err(|_| "bad signature: tampered, or signed with another authkey".to_string())?;
    multiproc::codec::decode(payload).map_err(|e| format!("signed but undecodable: {e}"))
}

fn mac(key: &[u8], kind: Kind, payload: &[u8]) -> HmacSha256 {
    let mut m =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(kind.domain());
    m.update(payload);
    m
}

/// How long connecting to the broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose reads end after `read_timeout` (longer than any `BLOCK` sent on it), so
/// a broker behind a cut link is noticed instead of waited for.
pub(crate) fn connect(
    client: &redis::Client,
    read_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(read_timeout))?;
    con.set_write_timeout(Some(read_timeout))?;
    Ok(con)
}

/// The broker's clock, in milliseconds since the epoch (`TIME`).
pub(crate) fn broker_ms(con: &mut redis::Connection) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con)?;
    Ok(secs * 1000 + micros / 1000)
}

/// The Redis keys of one queue.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// The queue's name.
    pub queue: String,
    /// The stream of tasks.
    pub tasks: String,
    /// The dead-letter stream.
    pub dead: String,
    /// The set of worker ids that announced themselves.
    pub workers: String,
}

/// The consumer group of the workers on the task stream.
pub(crate) const GROUP: &str = "workers";

impl Keys {
    pub(crate) fn new(queue: &str) -> Keys {
        let prefix = format!("mp:{{{queue}}}:");
        Keys {
            tasks: format!("{prefix}tasks"),
            dead: format!("{prefix}dead"),
            workers: format!("{prefix}workers"),
            prefix,
            queue: queue.to_string(),
        }
    }

    /// The reply stream of client `client`.
    pub(crate) fn replies(&self, client: &str) -> String {
        format!("{}replies:{client}", self.prefix)
    }

    /// The claim of submission `attempt` of task `task` of client `client`: which entry
    /// runs it (`run:ENTRY`) or ran it (`done:ENTRY`). It lives at least until the task's
    /// expiry, so a copy of the entry is refused while it does.
    pub(crate) fn claim(&self, client: &str, task: u64, attempt: u32) -> String {
        format!("{}claim:{client}:{task}:{attempt}", self.prefix)
    }

    /// The heartbeat hash of worker `id`.
    pub(crate) fn worker(&self, id: &str) -> String {
        format!("{}worker:{id}", self.prefix)
    }
}

/// Creates the workers' consumer group (and the stream) if missing.
pub(crate) fn ensure_group(con: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.tasks)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// A stream entry: its id and fields.
pub(crate) type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The bytes of a string-like reply value.
pub(crate) fn bytes(v: &redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

/// The entries of an `XRANGE`-shaped array (`[[id, [field, value, ...]], ...]`).
pub(crate) fn entries(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|e| {
            let redis::Value::Array(pair) = e else {
                return None;
            };
            let id = String::from_utf8(bytes(pair.first()?)?).ok()?;
            let fields = match pair.get(1)? {
                redis::Value::Array(f) => f
                    .chunks(2)
                    .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
                    .collect(),
                _ => Vec::new(),
            };
            Some((id, fields))
        })
        .collect()
}

/// The entries of an `XREAD`/`XREADGROUP` reply (one stream asked for).
pub(crate) fn read_entries(v: &redis::Value) -> Vec<Entry> {
    match v {
        redis::Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                redis::Value::Array(pair) => pair.get(1).map(entries),
                _ => None,
            })
            .flatten()
            .collect(),
        redis::Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// A field of an entry.
pub(crate) fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a [u8]> {
    entry
        .1
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_untouched() {
        let t = Task {
            client: "c".into(),
            queue: "q".into(),
            id: 3,
            attempt: 0,
            expires_ms: 1,
            function: "f".into(),
            items: vec![ByteBuf::from(vec![1, 2])],
            timeout_ms: None,
        };
        let (p, s) = seal(b"key", Kind::Task, &t).unwrap();
        let back: Task = open(b"key", Kind::Task, Some(&p), Some(&s)).unwrap();
        assert_eq!((back.id, back.items[0].as_ref()), (3, &[1u8, 2][..]));
        assert!(open::<Task>(b"other", Kind::Task, Some(&p), Some(&s)).is_err());
        let mut tampered = p.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open::<Task>(b"key", Kind::Task, Some(&tampered), Some(&s)).is_err());
        assert!(open::<Task>(b"key", Kind::Task, Some(&p), None).is_err());
        // A task's signature is no reply's.
        assert!(open::<Task>(b"key", Kind::Reply, Some(&p), Some(&s)).is_err());
    }

    #[test]
    fn parses_stream_replies() {
        use redis::Value::{Array, BulkString};
        let e = Array(vec![
            BulkString(b"1-0".to_vec()),
            Array(vec![BulkString(b"p".to_vec()), BulkString(b"x".to_vec())]),
        ]);
        let read = Array(vec![Array(vec![BulkString(b"s".to_vec()), Array(vec![e])])]);
        let got = read_entries(&read);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(field(&got[0], "p"), Some(&b"x"[..]));
        assert!(read_entries(&redis::Value::Nil).is_empty());
    }
}
