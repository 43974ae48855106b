//! The authentication handshake of CPython's `multiprocessing.connection`: a mutual HMAC
//! challenge. Modern peers (CPython 3.12+) prefix the challenge and the response with the
//! digest name (`{sha256}`); legacy peers (3.11 and older) use a bare 20-byte challenge and a
//! bare HMAC-MD5 response. Both are accepted; this side always challenges the modern way.

use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};

use super::Connection;
use crate::error::ConnectionError;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a modern challenge.
const MESSAGE_LENGTH: usize = 40;
/// The shortest challenge accepted (a legacy one).
const MD5ONLY_MESSAGE_LENGTH: usize = 20;
const MAX_DIGEST_LEN: usize = 20;
const ALLOWED_DIGESTS: [&str; 5] = ["md5", "sha256", "sha384", "sha3_256", "sha3_384"];
/// Handshake messages are short: refuse anything longer, as CPython does.
const MAX_HANDSHAKE_MESSAGE: u64 = 256;

fn auth_error(msg: impl Into<String>) -> ConnectionError {
    ConnectionError::Authentication(msg.into())
}

/// Splits `{digest}payload` into the digest name and the payload; `("", message)` when there
/// is no known digest prefix (a legacy message).
fn digest_name_and_payload(message: &[u8]) -> (&str, &[u8]) {
    if message.first() == Some(&b'{') {
        let window = &message[1..message.len().min(MAX_DIGEST_LEN + 2)];
        if let Some(end) = window.iter().position(|&b| b == b'}')
            && let Ok(name) = std::str::from_utf8(&window[..end])
            && ALLOWED_DIGESTS.contains(&name)
        {
            return (name, &message[end + 2..]);
        }
    }
    ("", message)
}

fn mac_of<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> M {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac
}

/// HMAC of `message` under `key` with the named digest; `None` for a digest this build does
/// not provide.
fn hmac_digest(name: &str, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    Some(match name {
        "md5" => mac_of::<Hmac<md5::Md5>>(key, message)
            .finalize()
            .into_bytes()
            .to_vec(),
        "sha256" => mac_of::<Hmac<sha2::Sha256>>(key, message)
            .finalize()
            .into_bytes()
            .to_vec(),
        "sha384" => mac_of::<Hmac<sha2::Sha384>>(key, message)
            .finalize()
            .into_bytes()
            .to_vec(),
        _ => return None,
    })
}

/// Checks `mac` against the HMAC of `message`, in constant time.
fn verify_digest(name: &str, key: &[u8], message: &[u8], mac: &[u8]) -> Option<bool> {
    Some(match name {
        "md5" => mac_of::<Hmac<md5::Md5>>(key, message)
            .verify_slice(mac)
            .is_ok(),
        "sha256" => mac_of::<Hmac<sha2::Sha256>>(key, message)
            .verify_slice(mac)
            .is_ok(),
        "sha384" => mac_of::<Hmac<sha2::Sha384>>(key, message)
            .verify_slice(mac)
            .is_ok(),
        _ => return None,
    })
}

/// The answer to a challenge `message` (without the `#CHALLENGE#` prefix), as CPython's
/// `_create_response`.
fn create_response(key: &[u8], message: &[u8]) -> Result<Vec<u8>, ConnectionError> {
    let (name, _) = digest_name_and_payload(message);
    if name.is_empty() {
        // A legacy peer: a bare HMAC-MD5 of the whole message.
        return Ok(hmac_digest("md5", key, message).expect("md5 is built in"));
    }
    let mac = hmac_digest(name, key, message)
        .ok_or_else(|| auth_error(format!("digest {name} is not supported")))?;
    Ok([format!("{{{name}}}").as_bytes(), &mac].concat())
}

/// Whether `response` answers challenge `message`, as CPython's `_verify_challenge`.
fn verify_response(key: &[u8], message: &[u8], response: &[u8]) -> Result<(), ConnectionError> {
    let (name, mac) = digest_name_and_payload(response);
    let name = if name.is_empty() { "md5" } else { name };
    match verify_digest(name, key, message, mac) {
        None => Err(auth_error(format!("digest {name} is not supported"))),
        Some(true) => Ok(()),
        Some(false) => Err(auth_error("digest received was wrong")),
    }
}

fn recv_short(
    conn: &Connection,
    deadline: Instant,
    what: &str,
) -> Result<Vec<u8>, ConnectionError> {
    conn.recv_frame_until(deadline, MAX_HANDSHAKE_MESSAGE).map_err(|e| match e {
        ConnectionError::Timeout(_) => auth_error(format!(
            "no {what} from the peer within the handshake timeout (does only one side use an authkey?)"
        )),
        ConnectionError::Closed => auth_error(format!("the peer closed the connection instead of sending its {what}")),
        ConnectionError::MessageTooLarge { size, .. } => auth_error(format!("{what} of {size} bytes is too long")),
        ConnectionError::BadFrame(why) => auth_error(format!("protocol error while reading the {what}: {why}")),
        other => other,
    })
}

/// Challenges the peer to prove it knows `key` (CPython's `deliver_challenge`).
pub(crate) fn deliver_challenge(
    conn: &Connection,
    key: &[u8],
    deadline: Instant,
) -> Result<(), ConnectionError> {
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random)
        .map_err(|e| auth_error(format!("no random bytes for the challenge: {e}")))?;
    let message = [b"{sha256}".as_slice(), &random].concat();
    conn.send_bytes(&[CHALLENGE, &message].concat())?;
    let response = recv_short(conn, deadline, "answer to the challenge")?;
    match verify_response(key, &message, &response) {
        Ok(()) => conn.send_bytes(WELCOME),
        Err(e) => {
            let _ = conn.send_bytes(FAILURE);
            Err(e)
        }
    }
}

/// Answers the peer's challenge with `key` (CPython's `answer_challenge`).
pub(crate) fn answer_challenge(
    conn: &Connection,
    key: &[u8],
    deadline: Instant,
) -> Result<(), ConnectionError> {
    let message = recv_short(conn, deadline, "challenge")?;
    let Some(message) = message.strip_prefix(CHALLENGE) else {
        return Err(auth_error("protocol error: expected a challenge"));
    };
    if message.len() < MD5ONLY_MESSAGE_LENGTH {
        return Err(auth_error(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    conn.send_bytes(&create_response(key, message)?)?;
    let verdict = recv_short(conn, deadline, "verdict")?;
    if verdict != WELCOME {
        return Err(auth_error("digest sent was rejected (wrong authkey?)"));
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn digest_prefixes() {
        assert_eq!(
            digest_name_and_payload(b"{sha256}abc"),
            ("sha256", &b"abc"[..])
        );
        assert_eq!(digest_name_and_payload(b"{md5}"), ("md5", &b""[..]));
        assert_eq!(
            digest_name_and_payload(b"{nope}abc"),
            ("", &b"{nope}abc"[..])
        );
        assert_eq!(
            digest_name_and_payload(b"{sha256abc"),
            ("", &b"{sha256abc"[..])
        );
        assert_eq!(digest_name_and_payload(b""), ("", &b""[..]));
        assert_eq!(digest_name_and_payload(b"}"), ("", &b"}"[..]));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Vectors from CPython: hmac.new(b"key", msg, name).digest().
    #[test]
    fn responses_match_cpython() {
        let legacy = create_response(b"key", b"01234567890123456789").unwrap();
        assert_eq!(hex(&legacy), "ae7d03e33d4701b0d5b81be8e0602616");
        let modern =
            create_response(b"key", b"{sha256}0123456789012345678901234567890123456789").unwrap();
        assert!(modern.starts_with(b"{sha256}"));
        assert_eq!(
            hex(&modern[8..]),
            "97a6fb420b863e44fbd7ec91b1eb0d9aee2f467968ad579d601ae7911d11a239"
        );
        verify_response(b"key", b"01234567890123456789", &legacy).unwrap();
        verify_response(
            b"key",
            b"{sha256}0123456789012345678901234567890123456789",
            &modern,
        )
        .unwrap();
        assert!(verify_response(b"other", b"01234567890123456789", &legacy).is_err());
        assert!(verify_response(b"key", b"x", b"{sha3_256}abc").is_err());
    }
}
