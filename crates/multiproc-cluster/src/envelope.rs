//! What travels through Redis: tasks and replies, encoded with postcard and signed with
//! HMAC-SHA256 under the authkey, and the keys they live under.

use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::TaskFailure;

type HmacSha256 = Hmac<sha2::Sha256>;

/// A chunk of items of one function, as a client submits it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Task {
    /// Unique within the client.
    pub id: u64,
    /// The client's id: where the reply goes.
    pub client: String,
    /// The function's registered name.
    pub function: String,
    /// Each item's encoded arguments.
    pub items: Vec<ByteBuf>,
    /// Per-item time limit.
    pub timeout_ms: Option<u64>,
}

/// The outcome of a task, as a worker reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub task: u64,
    /// Each item's encoded result, or the failure of the whole task.
    pub items: Result<Vec<Result<ByteBuf, TaskFailure>>, TaskFailure>,
}

/// Stream field names.
pub(crate) const PAYLOAD: &str = "p";
pub(crate) const SIGNATURE: &str = "s";

/// Encodes and signs `value`: (payload, tag).
pub(crate) fn seal<T: Serialize>(key: &[u8], value: &T) -> Result<(Vec<u8>, Vec<u8>), String> {
    let payload = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
    let tag = mac(key, &payload).finalize().into_bytes().to_vec();
    Ok((payload, tag))
}

/// Checks the tag and decodes; `Err` says why the entry is rejected.
pub(crate) fn open<T: DeserializeOwned>(
    key: &[u8],
    payload: Option<&[u8]>,
    tag: Option<&[u8]>,
) -> Result<T, String> {
    let (payload, tag) = match (payload, tag) {
        (Some(p), Some(t)) => (p, t),
        _ => return Err("unsigned entry (no payload or no signature)".into()),
    };
    mac(key, payload)
        .verify_slice(tag)
        .map_err(|_| "bad signature: tampered, or signed with another authkey".to_string())?;
    postcard::from_bytes(payload).map_err(|e| format!("signed but undecodable: {e}"))
}

fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    let mut m =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(payload);
    m
}

/// The Redis keys of one queue.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
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
        }
    }

    /// The reply stream of client `client`.
    pub(crate) fn replies(&self, client: &str) -> String {
        format!("{}replies:{client}", self.prefix)
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
            id: 3,
            client: "c".into(),
            function: "f".into(),
            items: vec![ByteBuf::from(vec![1, 2])],
            timeout_ms: None,
        };
        let (p, s) = seal(b"key", &t).unwrap();
        let back: Task = open(b"key", Some(&p), Some(&s)).unwrap();
        assert_eq!((back.id, back.items[0].as_ref()), (3, &[1u8, 2][..]));
        assert!(open::<Task>(b"other", Some(&p), Some(&s)).is_err());
        let mut tampered = p.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open::<Task>(b"key", Some(&tampered), Some(&s)).is_err());
        assert!(open::<Task>(b"key", Some(&p), None).is_err());
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
