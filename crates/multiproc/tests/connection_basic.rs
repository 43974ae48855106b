//! Connections: pipes, typed and raw messages, descriptors, wait(), listeners and clients over
//! every address family, authentication, limits and hostile input.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use common::LeakCheck;
use multiproc::connection::{DEFAULT_MAX_MESSAGE, Listener as L};
use multiproc::{Address, Client, Connection, ConnectionError, Fd, Func, Listener, pipe, wait};

/// How long a test waits for a message that should be there.
const T: Duration = Duration::from_secs(10);

#[test]
fn duplex_pipe_carries_typed_and_raw_messages_both_ways() {
    let (a, b) = pipe(true).unwrap();
    a.send(&(1u8, "two".to_string(), vec![3.0f64])).unwrap();
    let got: (u8, String, Vec<f64>) = b.recv().unwrap();
    assert_eq!(got, (1, "two".into(), vec![3.0]));
    b.send_bytes(b"").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"");
    b.send_bytes(b"xyz").unwrap();
    let mut small = [0u8; 2];
    match a.recv_bytes_into(&mut small) {
        Err(ConnectionError::BufferTooShort(m)) => assert_eq!(m, b"xyz"),
        other => panic!("expected BufferTooShort, got {other:?}"),
    }
    b.send_bytes(b"xyz").unwrap();
    let mut big = [0u8; 8];
    assert_eq!(a.recv_bytes_into(&mut big).unwrap(), 3);
    assert_eq!(&big[..3], b"xyz");
}

#[test]
fn simplex_pipe_has_directions() {
    let (rx, tx) = pipe(false).unwrap();
    assert!(rx.readable() && !rx.writable());
    assert!(tx.writable() && !tx.readable());
    assert!(matches!(
        rx.send_bytes(b"x"),
        Err(ConnectionError::WrongDirection(_))
    ));
    assert!(matches!(
        tx.recv_bytes(),
        Err(ConnectionError::WrongDirection(_))
    ));
    tx.send_bytes(b"one way").unwrap();
    assert_eq!(rx.recv_bytes().unwrap(), b"one way");
}

#[test]
fn closed_peer_and_timeouts() {
    let (a, b) = pipe(true).unwrap();
    assert!(!a.poll(Some(Duration::ZERO)).unwrap());
    common::assert_times_out_on_time(
        Duration::from_millis(200),
        Duration::from_millis(100),
        || {
            assert!(matches!(
                a.recv_timeout::<u8>(Duration::from_millis(200)),
                Err(ConnectionError::Timeout(_))
            ))
        },
    );
    b.send(&5u8).unwrap();
    assert!(a.poll(Some(Duration::from_secs(5))).unwrap());
    assert_eq!(a.recv_timeout::<u8>(Duration::from_secs(5)).unwrap(), 5);
    drop(b);
    assert!(matches!(a.recv_bytes(), Err(ConnectionError::Closed)));
    assert!(matches!(a.send_bytes(b"x"), Err(ConnectionError::Closed)));
}

#[test]
fn large_and_empty_messages() {
    let (a, b) = pipe(true).unwrap();
    let big: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = big.clone();
    let t = std::thread::spawn(move || a.send_bytes(&big).map(|()| a));
    let got = b.recv_bytes().unwrap();
    assert!(got == expected, "64 MiB message corrupted");
    let a = t.join().unwrap().unwrap();
    a.send_bytes(&[]).unwrap();
    assert!(b.recv_bytes().unwrap().is_empty());
}

#[test]
fn wrong_type_is_a_codec_error_not_a_panic() {
    // The type tag of a typed message tells the receiver that it asked for another type.
    let (a, b) = pipe(true).unwrap();
    a.send(&1u8).unwrap();
    assert!(matches!(
        b.recv::<(u64, String)>(),
        Err(ConnectionError::Codec(_))
    ));
    a.send(&[0xffu8; 4]).unwrap();
    assert!(matches!(b.recv::<String>(), Err(ConnectionError::Codec(_))));
    a.send(&"a string").unwrap();
    assert!(matches!(b.recv::<bool>(), Err(ConnectionError::Codec(_))));
}

/// The message types of two programs built apart: the same names in modules of their own.
mod sender {
    #[derive(serde::Serialize)]
    pub(crate) struct Job {
        pub(crate) id: u32,
        pub(crate) tags: Vec<String>,
    }
}

mod receiver {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    pub(crate) struct Job {
        pub(crate) id: u32,
        pub(crate) tags: Vec<String>,
    }

    /// `Job` as an older receiver knows it: without its tags.
    pub(crate) mod old {
        #[derive(serde::Serialize, serde::Deserialize, Debug)]
        pub(crate) struct Job {
            pub(crate) id: u32,
        }
    }
}

/// The codec error inside a connection error, as its message.
fn codec_message<T: std::fmt::Debug>(got: Result<T, ConnectionError>) -> String {
    match got {
        Err(ConnectionError::Codec(e)) => e.to_string(),
        other => panic!("expected a codec error, got {other:?}"),
    }
}

#[test]
fn a_message_received_as_another_type_is_a_codec_error() {
    let (a, b) = pipe(true).unwrap();
    a.send(&-1i32).unwrap();
    let m = codec_message(b.recv_timeout::<u32>(T));
    assert!(
        m.contains("`u32`") && m.contains("sent as another type"),
        "{m}"
    );
    a.send(&(1u8, 2u8)).unwrap();
    let m = codec_message(b.recv_timeout::<u16>(T));
    assert!(
        m.contains("`u16`") && m.contains("sent as another type"),
        "{m}"
    );
    a.send(&sender::Job {
        id: 1,
        tags: vec![],
    })
    .unwrap();
    let m = codec_message(b.recv_timeout::<(u32, Vec<String>)>(T));
    assert!(m.contains("sent as another type"), "{m}");
}

#[test]
fn bytes_left_after_a_typed_value_are_a_codec_error() {
    // Same name, fewer fields: the bytes of the missing ones are left over.
    let (a, b) = pipe(true).unwrap();
    a.send(&sender::Job {
        id: 1,
        tags: vec!["x".into()],
    })
    .unwrap();
    let m = codec_message(b.recv_timeout::<receiver::old::Job>(T));
    assert!(m.contains("Job`") && m.contains("3 bytes left over"), "{m}");
}

#[test]
fn the_connection_stays_in_step_after_a_refused_message() {
    let (a, b) = pipe(true).unwrap();
    a.send(&-1i32).unwrap();
    a.send(&7u32).unwrap();
    a.send(&sender::Job {
        id: 2,
        tags: vec!["y".into()],
    })
    .unwrap();
    a.send(&receiver::old::Job { id: 3 }).unwrap();
    assert!(b.recv_timeout::<u32>(T).is_err());
    assert_eq!(b.recv_timeout::<u32>(T).unwrap(), 7);
    assert!(b.recv_timeout::<receiver::old::Job>(T).is_err());
    assert_eq!(b.recv_timeout::<receiver::old::Job>(T).unwrap().id, 3);
}

#[test]
fn matching_types_pass_between_a_listener_and_a_client() {
    let listener = Listener::bind(Address::Unix(tmp_sock("types")), None).unwrap();
    let addr = listener.address().clone();
    let server = std::thread::spawn(move || -> Result<(), ConnectionError> {
        let conn = listener.accept()?;
        let job: receiver::Job = conn.recv_timeout(T)?;
        let (text, numbers): (String, Vec<u32>) = conn.recv_timeout(T)?;
        let maybe: Option<Box<str>> = conn.recv_timeout(T)?;
        conn.send(&(job, text, numbers, maybe))
    });
    let conn = Client::connect(&addr, None).unwrap();
    // A struct defined in another module, and borrowed forms of what the other end owns.
    conn.send(&sender::Job {
        id: 9,
        tags: vec!["urgent".into()],
    })
    .unwrap();
    conn.send(&("text", &[1u32, 2][..])).unwrap();
    conn.send(&Some("boxed")).unwrap();
    let (job, text, numbers, maybe): (receiver::Job, String, Vec<u32>, Option<String>) =
        conn.recv_timeout(T).unwrap();
    assert_eq!(
        job,
        receiver::Job {
            id: 9,
            tags: vec!["urgent".into()]
        }
    );
    assert_eq!(
        (text, numbers, maybe),
        ("text".into(), vec![1, 2], Some("boxed".into()))
    );
    server.join().unwrap().unwrap();
}

#[test]
fn raw_and_typed_messages_do_not_pass_for_each_other() {
    let (a, b) = pipe(true).unwrap();
    // Raw bytes carry no type tag: a typed receive refuses them.
    a.send_bytes(b"hello, typed world").unwrap();
    assert!(matches!(
        b.recv_timeout::<String>(T),
        Err(ConnectionError::Codec(_))
    ));
    a.send_bytes(b"hi").unwrap();
    assert!(matches!(
        b.recv_timeout::<u8>(T),
        Err(ConnectionError::Codec(_))
    ));
    // A typed message read raw is its 4-byte type tag, then the value's encoding.
    a.send(&5u8).unwrap();
    let raw = b.recv_bytes_timeout(T).unwrap();
    assert_eq!(raw.len(), 5);
    assert_eq!(raw[4], 5);
    // Relayed raw, it stays a typed message.
    b.send_bytes(&raw).unwrap();
    assert_eq!(a.recv_timeout::<u8>(T).unwrap(), 5);
}

/// A value whose own serde code refuses some values with messages of its own.
#[derive(Debug)]
struct Picky(u32);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            return Err(serde::ser::Error::custom("zero is not a picky number"));
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = <u32 as serde::Deserialize>::deserialize(d)?;
        if n % 2 == 1 {
            return Err(serde::de::Error::custom(format!("odd value {n} refused")));
        }
        Ok(Picky(n))
    }
}

#[test]
fn the_messages_of_a_types_own_serde_errors_reach_the_caller() {
    let (a, b) = pipe(true).unwrap();
    let m = codec_message(a.send(&Picky(0)));
    assert!(
        m.contains("Picky`") && m.contains("zero is not a picky number"),
        "{m}"
    );
    a.send(&Picky(3)).unwrap();
    let m = codec_message(b.recv_timeout::<Picky>(T));
    assert!(
        m.contains("Picky`") && m.contains("odd value 3 refused"),
        "{m}"
    );
    a.send(&Picky(4)).unwrap();
    assert_eq!(b.recv_timeout::<Picky>(T).unwrap().0, 4);
}

#[test]
fn descriptors_and_connections_travel_through_connections() {
    let (a, b) = pipe(true).unwrap();
    // A raw handle, CPython style.
    let (mut r, w) = std::io::pipe().unwrap();
    a.send_handle(w.as_fd()).unwrap();
    drop(w);
    let w2 = std::fs::File::from(b.recv_handle().unwrap());
    (&w2).write_all(b"via send_handle").unwrap();
    drop(w2);
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    assert_eq!(s, "via send_handle");
    // A connection inside a typed message.
    let (inner_a, inner_b) = pipe(true).unwrap();
    a.send(&("take this", inner_b)).unwrap();
    let (label, inner): (String, Connection) = b.recv().unwrap();
    assert_eq!(label, "take this");
    inner_a.send(&42u32).unwrap();
    assert_eq!(inner.recv::<u32>().unwrap(), 42);
    // An Fd inside a typed message.
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    a.send(&Fd::from(OwnedFd::from(file))).unwrap();
    let fd: Fd = b.recv().unwrap();
    let mut head = [0u8; 4];
    std::fs::File::from(fd.into_owned())
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"\x7fELF");
}

#[multiproc::func]
fn echo_through(conn: Connection, times: u32) -> u32 {
    let mut n = 0;
    for _ in 0..times {
        let v: u64 = conn.recv().unwrap();
        conn.send(&(v * 2)).unwrap();
        n += 1;
    }
    n
}

#[multiproc::test]
fn a_connection_end_passes_to_a_child() {
    let _leaks = LeakCheck::new();
    for method in multiproc::StartMethod::ALL {
        let (ours, theirs) = pipe(true).unwrap();
        let p = multiproc::Process::builder()
            .start_method(method)
            .start(&echo_through, (theirs, 3))
            .unwrap();
        for i in 0..3u64 {
            ours.send(&i).unwrap();
            assert_eq!(
                ours.recv_timeout::<u64>(Duration::from_secs(20)).unwrap(),
                i * 2
            );
        }
        assert_eq!(p.join().unwrap(), 3);
    }
}

#[multiproc::func]
fn sleep_then_exit(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[multiproc::test]
fn wait_over_many_pipes_and_a_sentinel() {
    let _leaks = LeakCheck::new();
    let pairs: Vec<(Connection, Connection)> = (0..100).map(|_| pipe(true).unwrap()).collect();
    let fds: Vec<_> = pairs.iter().map(|(a, _)| a.as_fd()).collect();
    assert!(
        wait(&fds, Some(Duration::from_millis(50)))
            .unwrap()
            .is_empty()
    );
    for i in [3usize, 57, 99] {
        pairs[i].1.send_bytes(b"ready").unwrap();
    }
    assert_eq!(
        wait(&fds, Some(Duration::from_secs(5))).unwrap(),
        vec![3, 57, 99]
    );
    let p = sleep_then_exit.spawn(100).unwrap();
    let (quiet, _keep) = pipe(true).unwrap();
    let ready = wait(
        &[quiet.as_fd(), p.sentinel()],
        Some(Duration::from_secs(20)),
    )
    .unwrap();
    assert_eq!(ready, vec![1]);
    p.join().unwrap();
}

fn tmp_sock(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mp-conn-{tag}-{}.sock", std::process::id()))
}

fn serve_echo(listener: Listener, clients: usize) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        for _ in 0..clients {
            match listener.accept() {
                Ok(conn) => {
                    while let Ok(m) = conn.recv_bytes() {
                        if conn.send_bytes(&m).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    })
}

#[test]
fn listener_and_client_over_every_family_with_and_without_key() {
    let addresses: Vec<Address> = vec![
        "127.0.0.1:0".parse().unwrap(),
        "[::1]:0".parse().unwrap(),
        Address::Unix(tmp_sock("fam")),
        Address::Abstract(format!("mp-conn-abstract-{}", std::process::id()).into_bytes()),
    ];
    for addr in addresses {
        for key in [None, Some(&b"k3y"[..])] {
            let listener = match Listener::bind(&addr, key) {
                Ok(l) => l,
                Err(e) if matches!(addr, Address::Tcp(a) if a.is_ipv6()) => {
                    eprintln!("skipping IPv6: {e}");
                    continue;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            };
            let bound = listener.address().clone();
            let server = serve_echo(listener, 1);
            let conn = Client::connect(&bound, key).unwrap();
            conn.send_bytes(b"hello").unwrap();
            assert_eq!(conn.recv_bytes().unwrap(), b"hello");
            conn.send(&vec![7u32; 3]).unwrap();
            assert_eq!(conn.recv::<Vec<u32>>().unwrap(), vec![7; 3]);
            drop(conn);
            assert!(server.join().unwrap().is_empty());
            if let Address::Unix(p) = &bound {
                assert!(!p.exists(), "socket file left behind");
            }
        }
    }
}

#[test]
fn wrong_key_fails_on_both_ends_and_the_server_goes_on() {
    let listener = Listener::bind("127.0.0.1:0", Some(b"right")).unwrap();
    let addr = listener.address().clone();
    let server = serve_echo(listener, 2);
    let err = Client::connect(&addr, Some(b"wrong")).unwrap_err();
    assert!(
        matches!(err, ConnectionError::AuthenticationFailed(_)),
        "{err}"
    );
    let ok = Client::connect(&addr, Some(b"right")).unwrap();
    ok.send_bytes(b"still serving").unwrap();
    assert_eq!(ok.recv_bytes().unwrap(), b"still serving");
    drop(ok);
    let errors = server.join().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("authentication"), "{errors:?}");
}

#[test]
fn key_against_no_key_fails_within_the_handshake_timeout() {
    // Client with a key, server without: the client gets no challenge.
    let plain = Listener::bind("127.0.0.1:0", None).unwrap();
    let addr = plain.address().clone();
    let hold = std::thread::spawn(move || {
        let c = plain.accept().unwrap();
        let _ = c.recv_bytes_timeout(Duration::from_secs(5));
    });
    let t0 = Instant::now();
    let err = Client::default()
        .authkey("k")
        .handshake_timeout(Duration::from_millis(300))
        .open(&addr)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::HandshakeTimeout {
                waiting_for: "challenge",
                ..
            }
        ),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    hold.join().unwrap();

    // Server with a key, client without (silent): the server gives up after its timeout.
    let keyed = L::builder()
        .authkey("k")
        .handshake_timeout(Duration::from_millis(300))
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = keyed.address().clone();
    let server = std::thread::spawn(move || {
        let t0 = Instant::now();
        (keyed.accept().map(drop), t0.elapsed())
    });
    let silent = Client::connect(&addr, None).unwrap();
    let (result, took) = server.join().unwrap();
    assert!(
        matches!(result, Err(ConnectionError::HandshakeTimeout { .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(3));
    drop(silent);
}

#[test]
fn hostile_frames_get_typed_errors() {
    let limit = 1024u64;
    let listener = L::builder()
        .max_message_size(limit)
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = match listener.address() {
        Address::Tcp(a) => *a,
        _ => unreachable!(),
    };
    let server = std::thread::spawn(move || {
        let mut results = Vec::new();
        for _ in 0..4 {
            let conn = listener.accept().unwrap();
            results.push(conn.recv_bytes().map(|m| m.len()));
        }
        results
    });
    let raw = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(bytes).unwrap();
    };
    raw(&0x7fff_ffffi32.to_be_bytes()); // announces 2 GiB
    raw(&[0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0]); // -1 then 2^56 bytes
    raw(&[0, 0, 0, 10, b'a', b'b']); // truncated, then closed
    raw(&[0xff, 0xff, 0xff, 0xfe]); // negative length
    let results = server.join().unwrap();
    assert!(matches!(
        results[0],
        Err(ConnectionError::MessageTooLarge {
            size: 0x7fff_ffff,
            limit: 1024
        })
    ));
    assert!(matches!(
        results[1],
        Err(ConnectionError::MessageTooLarge { .. })
    ));
    assert!(matches!(results[2], Err(ConnectionError::BadFrame(_))));
    assert!(matches!(results[3], Err(ConnectionError::BadFrame(_))));
}

#[test]
fn garbage_during_the_handshake_is_a_typed_handshake_error() {
    let listener = Listener::bind("127.0.0.1:0", Some(b"k")).unwrap();
    let addr = match listener.address() {
        Address::Tcp(a) => *a,
        _ => unreachable!(),
    };
    let server = std::thread::spawn(move || {
        (0..3)
            .map(|_| listener.accept().map(drop))
            .collect::<Vec<_>>()
    });
    for bytes in [
        &b"\x00\x00\x00\x05hello"[..],
        &b"\xff\xff\xff\xff"[..],
        &[0u8; 3][..],
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut challenge = [0u8; 4 + 11 + 48];
        s.read_exact(&mut challenge).unwrap();
        assert_eq!(&challenge[4..15], b"#CHALLENGE#");
        s.write_all(bytes).unwrap();
    }
    // A wrong answer is a failed authentication; a frame cut short, a broken handshake.
    let mut kinds: Vec<&str> = server
        .join()
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Err(ConnectionError::AuthenticationFailed(_)) => "wrong answer",
            Err(ConnectionError::Authentication(_)) => "broken",
            other => panic!("{other:?}"),
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["broken", "broken", "wrong answer"]);
}

#[test]
fn backlog_takes_a_burst_of_clients() {
    let listener = Listener::bind("127.0.0.1:0", None).unwrap();
    let addr = listener.address().clone();
    // Connect 100 clients before the server accepts any: CPython's backlog of 1 drops them.
    let clients: Vec<Connection> = (0..100)
        .map(|_| Client::connect(&addr, None).unwrap())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        c.send(&(i as u32)).unwrap();
    }
    let mut seen: Vec<u32> = (0..100)
        .map(|_| listener.accept().unwrap().recv::<u32>().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    assert_eq!(DEFAULT_MAX_MESSAGE, 256 * 1024 * 1024);
}

#[test]
fn bad_addresses_are_typed_errors() {
    assert!(matches!(
        "".parse::<Address>(),
        Err(ConnectionError::BadAddress(_))
    ));
    assert!(matches!(
        Client::connect("127.0.0.1:1", None),
        Err(ConnectionError::Io(_))
    ));
    assert!(Client::connect("/nonexistent/dir/x.sock", None).is_err());
}

fn tcp_of(address: &Address) -> std::net::SocketAddr {
    match address {
        Address::Tcp(a) => *a,
        other => panic!("not TCP: {other}"),
    }
}

/// What receiving a frame that was announced as 200 MiB, of which 1 KiB came, costs in
/// resident memory: 8 connections at once, each received on its own thread, with a time
/// limit (`deadline`) or without. Runs in a child process so that nothing else in the
/// process allocates meanwhile.
#[multiproc::func]
fn rss_growth_of_announced_frames(deadline: bool) -> u64 {
    const CONNECTIONS: usize = 8;
    let listener = Listener::bind("127.0.0.1:0", None).unwrap();
    let addr = tcp_of(listener.address());
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..CONNECTIONS {
        senders.push(std::net::TcpStream::connect(addr).unwrap());
        let conn = listener.accept().unwrap();
        receivers.push(std::thread::spawn(move || {
            if deadline {
                conn.recv_bytes_timeout(T)
            } else {
                conn.recv_bytes()
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300)); // the receivers wait for their headers
    let before = common::rss_bytes(std::process::id());
    for s in &mut senders {
        s.write_all(&(200i32 << 20).to_be_bytes()).unwrap();
        s.write_all(&[7u8; 1024]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // the receivers take the 1 KiB in
    let growth = common::rss_bytes(std::process::id()).saturating_sub(before);
    drop(senders);
    for r in receivers {
        assert!(matches!(
            r.join().unwrap(),
            Err(ConnectionError::BadFrame(_))
        ));
    }
    growth
}

#[multiproc::test]
fn memory_for_a_frame_grows_with_the_bytes_that_arrive() {
    let _leaks = LeakCheck::new();
    for method in multiproc::StartMethod::ALL {
        for deadline in [false, true] {
            let growth = multiproc::Process::builder()
                .start_method(method)
                .start(&rss_growth_of_announced_frames, deadline)
                .unwrap()
                .join()
                .unwrap();
            eprintln!("{method:?}, deadline {deadline}: {} KiB", growth >> 10);
            assert!(
                growth < 2 << 20,
                "{method:?}, deadline {deadline}: 8 frames of 1 KiB took {growth} bytes"
            );
        }
    }
}

/// Serves `listener` on a thread of its own, each authenticated client on another thread
/// that echoes its messages; failed handshakes come out of the channel.
fn serve_concurrently(listener: Listener) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    std::thread::spawn(move || {
                        while let Ok(m) = conn.recv_bytes() {
                            if conn.send_bytes(&m).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(e) => {
                    if tx.send(e.to_string()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

#[test]
fn fifty_silent_clients_do_not_hold_up_a_good_one() {
    let listener = Listener::bind("127.0.0.1:0", Some(b"k")).unwrap();
    let addr = listener.address().clone();
    let _failures = serve_concurrently(listener);
    let silent: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(tcp_of(&addr)).unwrap())
        .collect();
    let t0 = Instant::now();
    let conn = Client::default()
        .authkey("k")
        .handshake_timeout(T)
        .open(&addr)
        .unwrap();
    conn.send_bytes(b"served").unwrap();
    assert_eq!(conn.recv_bytes_timeout(T).unwrap(), b"served");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    drop(silent);
}

#[test]
fn accept_hands_back_connections_in_the_order_their_handshakes_complete() {
    let listener = Listener::bind("127.0.0.1:0", Some(b"k")).unwrap();
    let addr = listener.address().clone();
    // The first client connects but answers its challenge only later.
    let first = std::net::TcpStream::connect(tcp_of(&addr)).unwrap();
    let second = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let c = Client::default()
                .authkey("k")
                .handshake_timeout(T)
                .open(&addr)?;
            c.send_bytes(b"second")?;
            Ok::<_, ConnectionError>(c)
        }
    });
    let conn = listener.accept_timeout(T).unwrap();
    assert_eq!(conn.recv_bytes_timeout(T).unwrap(), b"second");
    let _second = second.join().unwrap().unwrap();
    let first = std::thread::spawn(move || {
        let c = Connection::from_socket(OwnedFd::from(first));
        c.authenticate_client(b"k", T)?;
        c.send_bytes(b"first")?;
        Ok::<_, ConnectionError>(c)
    });
    let conn = listener.accept_timeout(T).unwrap();
    assert_eq!(conn.recv_bytes_timeout(T).unwrap(), b"first");
    let _first = first.join().unwrap().unwrap();
}

#[test]
fn a_handshake_time_out_and_a_wrong_key_say_so_on_both_ends() {
    let short = Duration::from_millis(300);
    let listener = L::builder()
        .authkey("right")
        .handshake_timeout(short)
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = listener.address().clone();
    // Server side: a client that never answers, one with the wrong key.
    let silent = std::net::TcpStream::connect(tcp_of(&addr)).unwrap();
    let timed_out = listener.accept_timeout(T).unwrap_err();
    assert!(
        matches!(
            timed_out,
            ConnectionError::HandshakeTimeout {
                waiting_for: "answer to the challenge",
                timeout
            } if timeout == short
        ),
        "{timed_out:?}"
    );
    drop(silent);
    let wrong = Client::default().authkey("wrong").handshake_timeout(T);
    let client_err = wrong.open(&addr).unwrap_err();
    let server_err = listener.accept_timeout(T).unwrap_err();
    for e in [&client_err, &server_err] {
        assert!(
            matches!(e, ConnectionError::AuthenticationFailed(_)),
            "{e:?}"
        );
        assert!(e.to_string().contains("wrong authkey"), "{e}");
    }
    assert!(timed_out.to_string().starts_with("handshake timed out"));
    assert!(client_err.to_string().starts_with("authentication failed"));
    // Client side: a server that never sends its challenge.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Client::default()
        .authkey("right")
        .handshake_timeout(short)
        .open(mute.local_addr().unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::HandshakeTimeout {
                waiting_for: "challenge",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn accept_raw_lets_a_server_run_handshakes_on_threads_of_its_own() {
    let listener = Listener::bind("127.0.0.1:0", None).unwrap();
    let addr = listener.address().clone();
    let _silent = std::net::TcpStream::connect(tcp_of(&addr)).unwrap();
    let good = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let c = Client::default()
                .authkey("k")
                .handshake_timeout(T)
                .open(&addr)?;
            c.send_bytes(b"hi")?;
            Ok::<_, ConnectionError>(c)
        }
    });
    let handshakes: Vec<_> = (0..2)
        .map(|_| {
            let conn = listener.accept_raw().unwrap();
            std::thread::spawn(move || {
                conn.authenticate_server(b"k", Duration::from_secs(2))
                    .and_then(|()| conn.recv_bytes_timeout(T))
            })
        })
        .collect();
    let t0 = Instant::now();
    let _good = good.join().unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let mut results: Vec<_> = handshakes.into_iter().map(|h| h.join().unwrap()).collect();
    results.sort_by_key(|r| r.is_err());
    assert_eq!(results[0].as_ref().unwrap(), b"hi");
    assert!(matches!(
        results[1],
        Err(ConnectionError::HandshakeTimeout { .. })
    ));
}

#[test]
fn accept_timeout_and_wait_see_authenticated_connections() {
    for key in [None, Some(&b"k"[..])] {
        let listener = Listener::bind("127.0.0.1:0", key).unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            listener.accept_timeout(Duration::from_millis(100)),
            Err(ConnectionError::Timeout(_))
        ));
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(
            wait(&[listener.as_fd()], Some(Duration::from_millis(50)))
                .unwrap()
                .is_empty()
        );
        let client = Client::connect(listener.address(), key).unwrap();
        assert_eq!(wait(&[listener.as_fd()], Some(T)).unwrap(), vec![0]);
        let conn = listener.accept_timeout(Duration::ZERO).unwrap();
        client.send_bytes(b"x").unwrap();
        assert_eq!(conn.recv_bytes_timeout(T).unwrap(), b"x");
        assert!(
            wait(&[listener.as_fd()], Some(Duration::from_millis(50)))
                .unwrap()
                .is_empty(),
            "nothing left to accept"
        );
    }
}

#[test]
fn at_the_bound_of_pending_handshakes_the_oldest_gives_way() {
    let listener = L::builder()
        .authkey("k")
        .max_pending_handshakes(4)
        .handshake_timeout(T)
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = listener.address().clone();
    let failures = serve_concurrently(listener);
    let silent: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(tcp_of(&addr)).unwrap())
        .collect();
    let t0 = Instant::now();
    let conn = Client::default()
        .authkey("k")
        .handshake_timeout(T)
        .open(&addr)
        .unwrap();
    conn.send_bytes(b"served").unwrap();
    assert_eq!(conn.recv_bytes_timeout(T).unwrap(), b"served");
    // The silent ones ahead of it gave way a second after they came, four at a time.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let dropped = failures.recv_timeout(T).unwrap();
    assert!(dropped.contains("to make room"), "{dropped}");
    drop(silent);
}

/// Echoes `times` byte messages back.
#[multiproc::func]
fn echo_bytes_through(conn: Connection, times: u32) {
    for _ in 0..times {
        let m = conn.recv_bytes().unwrap();
        conn.send_bytes(&m).unwrap();
    }
}

per_start_method!(multiproc::test;
    messages_of_every_size_round_trip_with_a_child,
    a_connection_takes_the_messages_it_had_received_to_a_child,
    a_message_whose_descriptors_are_lost_is_dropped_and_the_others_come);

/// Round trips with a child under each start method, back to back (so that a receive finds
/// its message while it spins, or sleeps for it), at the sizes where a receive changes how it
/// reads: empty, tiny, at and past the one-receive limit of a small message, and large.
fn messages_of_every_size_round_trip_with_a_child(method: multiproc::StartMethod) {
    let _leaks = LeakCheck::new();
    let sizes = [0usize, 1, 13, 4096, 64 << 10, (64 << 10) + 1, 3 << 20];
    let rounds = |size: usize| if size > 1 << 20 { 5u32 } else { 100 };
    let total = sizes.iter().map(|&s| rounds(s)).sum();
    let (ours, theirs) = pipe(true).unwrap();
    let p = multiproc::Process::builder()
        .start_method(method)
        .start(&echo_bytes_through, (theirs, total))
        .unwrap();
    for &size in &sizes {
        for r in 0..rounds(size) {
            let m: Vec<u8> = (0..size).map(|i| (i as u32 ^ r) as u8).collect();
            ours.send_bytes(&m).unwrap();
            let back = ours.recv_bytes().unwrap();
            assert!(
                back == m,
                "size {size}, round {r}: {} bytes back",
                back.len()
            );
        }
    }
    p.join().unwrap();
}

/// Receives every message left on `conn` after `ends` (and up to it), and sends them back
/// as one list; then sends a burst of `burst` messages of growing sizes.
#[multiproc::func]
fn collect_then_burst(conn: Connection, ends: Vec<u8>, burst: u32) {
    let mut got = Vec::new();
    loop {
        let m = conn.recv_bytes().unwrap();
        let last = m == ends;
        got.push(m);
        if last {
            break;
        }
    }
    conn.send(&got).unwrap();
    for i in 0..burst {
        conn.send_bytes(&vec![i as u8; (i as usize * 97) % 5000])
            .unwrap();
    }
}

/// A burst of messages is taken in by one receive; those not yet handed out go with the
/// connection when it is handed to a child (under each start method), and a burst from the
/// child comes back whole and in order.
fn a_connection_takes_the_messages_it_had_received_to_a_child(method: multiproc::StartMethod) {
    let _leaks = LeakCheck::new();
    let (feed, relay) = pipe(true).unwrap();
    for m in [&b"one"[..], b"two", b"three"] {
        feed.send_bytes(m).unwrap();
    }
    // "two" and "three" came in with "one": they are in `relay` now, not in its socket.
    assert_eq!(relay.recv_bytes().unwrap(), b"one");
    let p = multiproc::Process::builder()
        .start_method(method)
        .start(&collect_then_burst, (relay, b"four".to_vec(), 200u32))
        .unwrap();
    feed.send_bytes(b"four").unwrap();
    let got: Vec<Vec<u8>> = feed.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(got, [&b"two"[..], b"three", b"four"]);
    for i in 0..200u32 {
        let m = feed.recv_bytes_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(m, vec![i as u8; (i as usize * 97) % 5000], "message {i}");
    }
    p.join().unwrap();
}

/// At its limit of open files, receives what comes on `conn` and reports each outcome.
#[multiproc::func]
fn receive_at_the_descriptor_limit(conn: Connection, report: Connection) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Room for nothing more: the next descriptor this process would take fails.
    let next = std::fs::File::open("/dev/null").unwrap();
    let limit = std::os::fd::AsRawFd::as_raw_fd(&next) as u64;
    drop(next);
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).unwrap();
    let outcomes: Vec<String> = (0..3)
        .map(|_| match conn.recv_bytes() {
            Ok(m) => String::from_utf8_lossy(&m).into_owned(),
            Err(ConnectionError::DescriptorsLost) => "lost".to_string(),
            Err(e) => format!("error: {e}"),
        })
        .collect();
    report.send(&outcomes).unwrap();
}

/// A message with a descriptor the receiver cannot take (at its limit of open files) is
/// dropped with a typed error; the messages around it, taken in by the same receive, still
/// come whole and in order.
fn a_message_whose_descriptors_are_lost_is_dropped_and_the_others_come(
    method: multiproc::StartMethod,
) {
    let _leaks = LeakCheck::new();
    let (feed, theirs) = pipe(true).unwrap();
    let (report_rx, report_tx) = pipe(true).unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    feed.send_bytes(b"before").unwrap();
    let fd = multiproc::Fd::from(
        std::os::fd::AsFd::as_fd(&file)
            .try_clone_to_owned()
            .unwrap(),
    );
    feed.send(&fd).unwrap();
    feed.send_bytes(b"after").unwrap();
    let p = multiproc::Process::builder()
        .start_method(method)
        .start(&receive_at_the_descriptor_limit, (theirs, report_tx))
        .unwrap();
    let outcomes: Vec<String> = report_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(outcomes, ["before", "lost", "after"]);
    p.join().unwrap();
}

/// A connection gives up its socket only with nothing received and not yet handed out: the
/// messages it took in with a burst are not dropped with it, the error gives it back.
#[test]
fn a_connection_keeps_its_socket_while_it_holds_messages_not_yet_handed_out() {
    let (a, b) = pipe(true).unwrap();
    a.send_bytes(b"one").unwrap();
    a.send_bytes(b"two").unwrap();
    // Both messages are in the socket: the first receive takes in both.
    assert_eq!(
        b.recv_bytes_timeout(Duration::from_secs(5)).unwrap(),
        b"one"
    );
    let refused = OwnedFd::try_from(b).unwrap_err();
    assert!(
        refused.to_string().contains("not yet handed out"),
        "{refused}"
    );
    let b = refused.into_connection();
    assert_eq!(
        b.recv_bytes_timeout(Duration::from_secs(5)).unwrap(),
        b"two"
    );
    // Everything handed out: the socket comes out, and carries what the peer sends next.
    let fd = OwnedFd::try_from(b).unwrap();
    a.send_bytes(b"three").unwrap();
    let mut raw = std::fs::File::from(fd);
    let mut got = [0u8; 9];
    raw.read_exact(&mut got).unwrap();
    assert_eq!(&got[4..], b"three");
}
