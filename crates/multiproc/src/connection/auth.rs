//! The authentication handshake of CPython's `multiprocessing.connection`: a mutual HMAC
//! challenge. Modern peers (CPython 3.12+) prefix the challenge and the response with the
//! digest name (`{sha256}`); legacy peers (3.11 and older) use a bare 20-byte challenge and a
//! bare HMAC-MD5 response. Both are accepted; this side always challenges the modern way.
//!
//! The protocol is a state machine ([`Handshake`]) fed the peer's messages one at a time, and
//! [`Exchange`] runs it on a connection, reading only what has arrived: a blocking driver
//! ([`Connection::authenticate_server`], [`Client`](super::Client)) waits between steps, a
//! listener's handshake thread multiplexes many exchanges with `poll`.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};

use super::Connection;
use super::conn::frame_header;
use crate::error::ConnectionError;
use crate::sys;

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
/// The longest frame header (a length over 2 GiB).
const MAX_HEADER: usize = 12;

/// A handshake that broke down (not a wrong key, not a time-out).
fn protocol_error(msg: impl Into<String>) -> ConnectionError {
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
        .ok_or_else(|| protocol_error(format!("digest {name} is not supported")))?;
    Ok([format!("{{{name}}}").as_bytes(), &mac].concat())
}

/// Whether `response` answers challenge `message`, as CPython's `_verify_challenge`.
fn verify_response(key: &[u8], message: &[u8], response: &[u8]) -> Result<(), ConnectionError> {
    let (name, mac) = digest_name_and_payload(response);
    let name = if name.is_empty() { "md5" } else { name };
    match verify_digest(name, key, message, mac) {
        None => Err(protocol_error(format!("digest {name} is not supported"))),
        Some(true) => Ok(()),
        Some(false) => Err(ConnectionError::AuthenticationFailed(
            "the peer's answer to our challenge does not match the key (wrong authkey?)".into(),
        )),
    }
}

/// A fresh modern challenge (without the `#CHALLENGE#` prefix).
fn new_challenge() -> Result<Vec<u8>, ConnectionError> {
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random)
        .map_err(|e| protocol_error(format!("no random bytes for the challenge: {e}")))?;
    Ok([b"{sha256}".as_slice(), &random].concat())
}

/// The two halves of the handshake: make the peer prove it knows the key (CPython's
/// `deliver_challenge`), and prove it ourselves (`answer_challenge`). A server does them in
/// this order, a client in the other.
#[derive(Debug, Clone, Copy)]
enum Half {
    Deliver,
    Answer,
}

/// The message the handshake waits for next.
#[derive(Debug)]
enum Expect {
    /// The answer to the challenge we sent (kept here, without its prefix).
    Answer(Vec<u8>),
    /// The peer's challenge.
    Challenge,
    /// The peer's verdict on our answer.
    Verdict,
    /// Nothing: the handshake is over.
    Done,
    /// Nothing: the handshake failed.
    Failed,
}

/// One side of the handshake as a state machine: fed the peer's messages one at a time, it
/// queues the messages to send back. No I/O of its own.
#[derive(Debug)]
pub(crate) struct Handshake {
    key: Vec<u8>,
    expect: Expect,
    /// The half that follows the current one.
    then: Option<Half>,
    outgoing: Vec<Vec<u8>>,
}

impl Handshake {
    /// The server's side: challenge first (queued at once), then answer.
    pub(crate) fn server(key: &[u8]) -> Result<Handshake, ConnectionError> {
        Handshake::new(key, Half::Deliver, Half::Answer)
    }

    /// The client's side: answer first, then challenge.
    pub(crate) fn client(key: &[u8]) -> Result<Handshake, ConnectionError> {
        Handshake::new(key, Half::Answer, Half::Deliver)
    }

    fn new(key: &[u8], first: Half, then: Half) -> Result<Handshake, ConnectionError> {
        let mut h = Handshake {
            key: key.to_vec(),
            expect: Expect::Done,
            then: Some(then),
            outgoing: Vec::new(),
        };
        h.begin(first)?;
        Ok(h)
    }

    fn begin(&mut self, half: Half) -> Result<(), ConnectionError> {
        self.expect = match half {
            Half::Deliver => {
                let challenge = new_challenge()?;
                self.outgoing.push([CHALLENGE, &challenge].concat());
                Expect::Answer(challenge)
            }
            Half::Answer => Expect::Challenge,
        };
        Ok(())
    }

    /// The current half is done: on to the next, or the end.
    fn next_half(&mut self) -> Result<(), ConnectionError> {
        match self.then.take() {
            Some(half) => self.begin(half),
            None => {
                self.expect = Expect::Done;
                Ok(())
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.expect, Expect::Done)
    }

    /// What the handshake waits for, for messages.
    fn waiting_for(&self) -> &'static str {
        match self.expect {
            Expect::Answer(_) => "answer to the challenge",
            Expect::Challenge => "challenge",
            Expect::Verdict => "verdict on our answer",
            Expect::Done | Expect::Failed => "message",
        }
    }

    /// Takes the peer's next message. Messages to send are queued even when it fails (the
    /// `#FAILURE#` verdict on a wrong answer); a failed handshake stays failed.
    fn receive(&mut self, message: &[u8]) -> Result<(), ConnectionError> {
        let result = self.step(message);
        if result.is_err() {
            self.expect = Expect::Failed;
        }
        result
    }

    fn step(&mut self, message: &[u8]) -> Result<(), ConnectionError> {
        match std::mem::replace(&mut self.expect, Expect::Failed) {
            Expect::Answer(challenge) => match verify_response(&self.key, &challenge, message) {
                Ok(()) => {
                    self.outgoing.push(WELCOME.to_vec());
                    self.next_half()
                }
                Err(e) => {
                    self.outgoing.push(FAILURE.to_vec());
                    Err(e)
                }
            },
            Expect::Challenge => {
                let Some(challenge) = message.strip_prefix(CHALLENGE) else {
                    return Err(protocol_error("protocol error: expected a challenge"));
                };
                if challenge.len() < MD5ONLY_MESSAGE_LENGTH {
                    return Err(protocol_error(format!(
                        "challenge too short: {} bytes",
                        challenge.len()
                    )));
                }
                self.outgoing.push(create_response(&self.key, challenge)?);
                self.expect = Expect::Verdict;
                Ok(())
            }
            Expect::Verdict if message == WELCOME => self.next_half(),
            Expect::Verdict if message == FAILURE => Err(ConnectionError::AuthenticationFailed(
                "the peer rejected our answer to its challenge (wrong authkey?)".into(),
            )),
            Expect::Verdict => Err(protocol_error("protocol error: expected a verdict")),
            Expect::Done | Expect::Failed => {
                Err(protocol_error("protocol error: the handshake is over"))
            }
        }
    }
}

/// A [`Handshake`] running on a connection, with its time limit and the message being read.
///
/// Reads exactly the bytes of each handshake message, never past them: what the peer sends
/// right after the handshake belongs to the connection's user.
#[derive(Debug)]
pub(crate) struct Exchange {
    machine: Handshake,
    /// The frame being read: its header, then its payload.
    frame: Vec<u8>,
    timeout: Duration,
    deadline: Instant,
}

impl Exchange {
    /// Starts `machine` on `conn` (a server sends its challenge now), with `timeout` for the
    /// whole handshake.
    pub(crate) fn start(
        conn: &Connection,
        machine: Handshake,
        timeout: Duration,
    ) -> Result<Exchange, ConnectionError> {
        // The handshake reads the socket itself: messages received before it would be
        // skipped (and it would wait for a challenge that came with them).
        if !conn.received_nothing() {
            return Err(protocol_error(
                "messages were received on this connection before the handshake",
            ));
        }
        let mut x = Exchange {
            machine,
            frame: Vec::with_capacity(MAX_HEADER),
            timeout,
            deadline: Instant::now() + timeout,
        };
        x.flush(conn)?;
        Ok(x)
    }

    /// Sends what the machine queued. Handshake messages are a few dozen bytes on a socket
    /// with nothing else in flight: they fit its send buffer, so this does not wait.
    fn flush(&mut self, conn: &Connection) -> Result<(), ConnectionError> {
        for m in std::mem::take(&mut self.machine.outgoing) {
            conn.send_bytes(&m)?;
        }
        Ok(())
    }

    /// When the handshake must be over.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The error of a handshake whose time is up.
    pub(crate) fn timed_out(&self) -> ConnectionError {
        ConnectionError::HandshakeTimeout {
            waiting_for: self.machine.waiting_for(),
            timeout: self.timeout,
        }
    }

    /// The frame being read: `(header length, frame length)` once its header is in, `(0,
    /// header length so far known)` before.
    fn frame_length(&self) -> Result<(usize, usize), ConnectionError> {
        if self.frame.len() < 4 {
            return Ok((0, 4));
        }
        let what = self.machine.waiting_for();
        match frame_header(&self.frame, MAX_HANDSHAKE_MESSAGE) {
            Ok(None) => Ok((0, MAX_HEADER)),
            Ok(Some((hlen, size))) => Ok((hlen, hlen + size)),
            Err(ConnectionError::MessageTooLarge { size, .. }) => Err(protocol_error(format!(
                "{what} of {size} bytes is too long (is the peer speaking without an authkey?)"
            ))),
            Err(ConnectionError::BadFrame(why)) => Err(protocol_error(format!(
                "protocol error while reading the {what}: {why}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Makes the progress that what has arrived allows, without waiting: `true` once the
    /// handshake is over.
    pub(crate) fn advance(&mut self, conn: &Connection) -> Result<bool, ConnectionError> {
        let mut buf = [0u8; MAX_HEADER + MAX_HANDSHAKE_MESSAGE as usize];
        loop {
            if self.machine.is_done() {
                return Ok(true);
            }
            let (hlen, want) = self.frame_length()?;
            if hlen > 0 && self.frame.len() == want {
                let result = self.machine.receive(&self.frame[hlen..]);
                self.frame.clear();
                let sent = self.flush(conn);
                result?;
                sent?;
                continue;
            }
            let room = &mut buf[..want - self.frame.len()];
            match sys::recv_plain(conn.as_fd(), room, true) {
                Ok(0) => {
                    return Err(protocol_error(format!(
                        "the peer closed the connection instead of sending its {}",
                        self.machine.waiting_for()
                    )));
                }
                Ok(n) => self.frame.extend_from_slice(&room[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Runs `machine` on `conn` to its end, waiting for the peer within `timeout`.
fn run(conn: &Connection, machine: Handshake, timeout: Duration) -> Result<(), ConnectionError> {
    let mut x = Exchange::start(conn, machine, timeout)?;
    while !x.advance(conn)? {
        let left = x.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sys::poll_readable(&[conn.as_fd()], Some(left))? != [true] {
            return Err(x.timed_out());
        }
    }
    Ok(())
}

/// The authentication handshake on a connection of one's own making (a socket from
/// [`Listener::accept_raw`](super::Listener::accept_raw), or one wrapped with
/// [`Connection::from_socket`]), wire-compatible with CPython's.
impl Connection {
    /// Runs the server side of the handshake: challenges the peer to prove it knows
    /// `authkey`, then proves it too, all within `timeout`.
    ///
    /// A peer whose answer does not match the key gets `#FAILURE#` and this returns
    /// [`ConnectionError::AuthenticationFailed`]; a peer that does not answer in time gives
    /// [`ConnectionError::HandshakeTimeout`]; anything else that is not the handshake is
    /// [`ConnectionError::Authentication`]. A server serving each client on its own thread
    /// calls this there, after [`Listener::accept_raw`](super::Listener::accept_raw).
    ///
    /// ```
    /// use std::time::Duration;
    /// let listener = multiproc::Listener::bind("127.0.0.1:0", None)?;
    /// let address = listener.address().clone();
    /// let client = std::thread::spawn(move || {
    ///     multiproc::Client::connect(&address, Some(b"secret"))?.send_bytes(b"hi")
    /// });
    /// let conn = listener.accept_raw()?;
    /// conn.authenticate_server(b"secret", Duration::from_secs(5))?;
    /// assert_eq!(conn.recv_bytes()?, b"hi");
    /// client.join().unwrap()?;
    /// # Ok::<(), multiproc::ConnectionError>(())
    /// ```
    pub fn authenticate_server(
        &self,
        authkey: &[u8],
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        run(self, Handshake::server(authkey)?, timeout)
    }

    /// Runs the client side of the handshake: answers the server's challenge with
    /// `authkey`, then challenges the server, all within `timeout` (what
    /// [`Client`](super::Client) does after connecting). Errors as
    /// [`authenticate_server`](Connection::authenticate_server): a server that rejects the
    /// key gives [`ConnectionError::AuthenticationFailed`], one that sends no challenge in
    /// time [`ConnectionError::HandshakeTimeout`].
    pub fn authenticate_client(
        &self,
        authkey: &[u8],
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        run(self, Handshake::client(authkey)?, timeout)
    }
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

    /// Runs a server and a client machine against each other until neither has anything
    /// more to say; a side stops reading at its first error.
    fn talk(server_key: &[u8], client_key: &[u8]) -> [(bool, Option<ConnectionError>); 2] {
        let mut ends = [
            Handshake::server(server_key).unwrap(),
            Handshake::client(client_key).unwrap(),
        ];
        let mut errors: [Option<ConnectionError>; 2] = [None, None];
        let mut moved = true;
        while moved {
            moved = false;
            for from in 0..2 {
                let to = 1 - from;
                for m in std::mem::take(&mut ends[from].outgoing) {
                    moved = true;
                    if errors[to].is_none() {
                        errors[to] = ends[to].receive(&m).err();
                    }
                }
            }
        }
        let [server, client] = ends;
        let [server_err, client_err] = errors;
        [
            (server.is_done(), server_err),
            (client.is_done(), client_err),
        ]
    }

    #[test]
    fn machines_agree_on_the_right_key_and_both_refuse_a_wrong_one() {
        for (done, err) in talk(b"key", b"key") {
            assert!(done && err.is_none(), "{err:?}");
        }
        for (done, err) in talk(b"key", b"other") {
            assert!(!done);
            assert!(
                matches!(err, Some(ConnectionError::AuthenticationFailed(_))),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_machine_refuses_what_is_not_the_handshake() {
        let mut client = Handshake::client(b"key").unwrap();
        assert_eq!(client.waiting_for(), "challenge");
        assert!(matches!(
            client.receive(b"hello"),
            Err(ConnectionError::Authentication(_))
        ));
        let mut client = Handshake::client(b"key").unwrap();
        assert!(matches!(
            client.receive(b"#CHALLENGE#short"),
            Err(ConnectionError::Authentication(_))
        ));
        let mut server = Handshake::server(b"key").unwrap();
        assert_eq!(server.waiting_for(), "answer to the challenge");
        assert!(server.outgoing[0].starts_with(b"#CHALLENGE#{sha256}"));
        assert!(matches!(
            server.receive(b"{sha3_256}whatever"),
            Err(ConnectionError::Authentication(_))
        ));
    }
}
