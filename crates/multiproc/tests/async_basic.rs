//! Async processes and connections (feature `tokio`): readiness from the kernel, not a thread
//! per wait; every test runs under a current-thread and a multi-thread runtime, process tests
//! under every start method.
#![cfg(all(target_os = "linux", feature = "tokio"))]

mod async_common;
mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use async_common::{both_runtimes, threads};
use common::LeakCheck;
use multiproc::{
    Client, Connection, ConnectionError, Listener, Process, ProcessError, StartMethod,
};

#[multiproc::func]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[multiproc::func]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn builder(method: StartMethod) -> multiproc::Builder {
    Process::builder().start_method(method)
}

per_start_method!(
    join_async_returns_the_result,
    join_async_of_a_child_killed_while_awaited,
    wait_async_can_be_dropped_and_awaited_again,
    many_concurrent_joins_with_bounded_threads,
);

fn join_async_returns_the_result(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let p = builder(method).start(&add, (40, 2)).unwrap();
        assert_eq!(p.join_async().await.unwrap(), 42);
        let p = builder(method).start(&sleep_ms, 50).unwrap();
        assert_eq!(p.join_async().await.unwrap(), 50);
    });
}

fn join_async_of_a_child_killed_while_awaited(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let p = builder(method).start(&sleep_ms, 60_000).unwrap();
        let pid = p.pid() as i32;
        let killer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
                .unwrap();
        };
        let (joined, ()) = tokio::join!(p.join_async(), killer);
        match joined {
            Err(ProcessError::Killed { signal: 9, .. }) => {}
            other => panic!("expected Killed by 9, got {other:?}"),
        }
    });
}

fn wait_async_can_be_dropped_and_awaited_again(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let p = builder(method).start(&sleep_ms, 200).unwrap();
        // A select! that takes the other branch drops the wait part way.
        tokio::select! {
            _ = p.wait_async() => panic!("ended too soon"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert!(p.is_alive());
        assert_eq!(p.wait_async().await.unwrap(), 0);
        assert_eq!(p.join().unwrap(), 200);
    });
}

fn many_concurrent_joins_with_bounded_threads(method: StartMethod) {
    let _leaks = LeakCheck::new();
    // 1,000 children at once under fork (cheap to start); the exec'ing methods start fewer.
    let n: u64 = if method == StartMethod::Fork {
        1000
    } else {
        100
    };
    both_runtimes(|| async move {
        let before = threads();
        let procs: Vec<_> = (0..n)
            .map(|i| builder(method).start(&sleep_ms, 300 + i % 7).unwrap())
            .collect();
        let tasks: Vec<_> = procs
            .into_iter()
            .map(|p| tokio::spawn(p.join_async()))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let during = threads();
        // The runtime's workers and the library's own helper threads, not a thread per wait.
        assert!(
            during <= before + 8,
            "{during} threads while awaiting, {before} before"
        );
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), 300 + i as u64 % 7);
        }
    });
}

#[test]
fn connection_round_trips_typed_and_bytes() {
    both_runtimes(|| async {
        let (a, b) = multiproc::pipe(true).unwrap();
        for i in 0..100u32 {
            a.send_async(&("job", i)).await.unwrap();
            let (name, n): (String, u32) = b.recv_async().await.unwrap();
            assert_eq!((name.as_str(), n), ("job", i));
            b.send_bytes_async(&i.to_le_bytes()).await.unwrap();
            assert_eq!(a.recv_bytes_async().await.unwrap(), i.to_le_bytes());
        }
        // Sync and async mix on one connection.
        a.send(&7u8).unwrap();
        assert_eq!(b.recv_async::<u8>().await.unwrap(), 7);
        a.send_async(&8u8).await.unwrap();
        assert_eq!(b.recv::<u8>().unwrap(), 8);
        // Type checks and the end of the stream are errors, as for the sync methods.
        a.send_async(&-1i32).await.unwrap();
        assert!(matches!(
            b.recv_async::<u32>().await,
            Err(ConnectionError::Codec(_))
        ));
        drop(a);
        assert!(matches!(
            b.recv_async::<u32>().await,
            Err(ConnectionError::Closed)
        ));
        let (rx, _tx) = multiproc::pipe(false).unwrap();
        assert!(matches!(
            rx.send_async(&1u8).await,
            Err(ConnectionError::WrongDirection(_))
        ));
    });
}

#[test]
fn large_messages_both_ways_while_the_peer_is_another_task() {
    both_runtimes(|| async {
        let (a, b) = multiproc::pipe(true).unwrap();
        let big: Vec<u8> = (0..(8 << 20)).map(|i: u32| (i * 7) as u8).collect();
        let (sent, got) = tokio::join!(a.send_bytes_async(&big), b.recv_bytes_async());
        sent.unwrap();
        assert_eq!(got.unwrap(), big);
    });
}

/// A raw socket for one end, to write half a frame and stop.
fn raw_pair() -> (UnixStream, Connection) {
    let (raw, theirs) = UnixStream::pair().unwrap();
    (raw, Connection::from_socket(OwnedFd::from(theirs)))
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_receive_dropped_in_the_middle_of_a_message_loses_nothing() {
    both_runtimes(|| async {
        for finish_sync in [false, true] {
            let (mut raw, conn) = raw_pair();
            let first: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            let f = frame(&first);
            raw.write_all(&f[..2]).unwrap(); // half a header
            assert!(
                tokio::time::timeout(Duration::from_millis(20), conn.recv_bytes_async())
                    .await
                    .is_err()
            );
            raw.write_all(&f[2..100_000]).unwrap(); // the header and part of the payload
            assert!(
                tokio::time::timeout(Duration::from_millis(20), conn.recv_bytes_async())
                    .await
                    .is_err()
            );
            let writer = std::thread::spawn(move || {
                raw.write_all(&f[100_000..]).unwrap();
                raw.write_all(&frame(b"second")).unwrap();
                raw
            });
            if finish_sync {
                assert_eq!(conn.recv_bytes().unwrap(), first);
            } else {
                assert_eq!(conn.recv_bytes_async().await.unwrap(), first);
            }
            assert_eq!(conn.recv_bytes_async().await.unwrap(), b"second");
            drop(writer.join().unwrap());
        }
    });
}

/// A duplex pipe whose first end has a 4 MiB message part-sent: nobody reads, so the socket's
/// buffer fills and the async send, given 50 ms, is dropped part way. The message comes back.
async fn part_sent() -> (Connection, Connection, Vec<u8>) {
    let (a, b) = multiproc::pipe(true).unwrap();
    let big: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), a.send_bytes_async(&big))
            .await
            .is_err()
    );
    (a, b, big)
}

#[test]
fn a_send_dropped_part_way_is_finished_by_the_next_send() {
    both_runtimes(|| async {
        for next_sync in [false, true] {
            let (a, b, big) = part_sent().await;
            let reader = std::thread::spawn(move || {
                let first = b.recv_bytes().unwrap();
                let second = b.recv_bytes().unwrap();
                (first, second)
            });
            if next_sync {
                a.send_bytes(b"next").unwrap();
            } else {
                a.send_bytes_async(b"next").await.unwrap();
            }
            let (first, second) = reader.join().unwrap();
            assert_eq!(first, big);
            assert_eq!(second, b"next");
        }
    });
}

/// A connection whose async send was dropped part way sends the rest before it gives up its
/// socket or travels to another process: the peer gets the whole message, then what comes
/// through the socket or the copy.
#[test]
fn a_send_dropped_part_way_is_finished_before_the_socket_is_taken_or_sent() {
    both_runtimes(|| async {
        for travel in [false, true] {
            let (a, b, big) = part_sent().await;
            let reader = std::thread::spawn(move || {
                let t = Duration::from_secs(10);
                (b.recv_bytes_timeout(t), b.recv_bytes_timeout(t))
            });
            if travel {
                // Sent through another pipe, as to a child, and used from the copy.
                let (c, d) = multiproc::pipe(true).unwrap();
                c.send(&a).unwrap();
                drop(a);
                let copy: Connection = d.recv_timeout(Duration::from_secs(10)).unwrap();
                copy.send_bytes(b"after").unwrap();
            } else {
                let fd = OwnedFd::try_from(a).unwrap();
                let mut raw = std::fs::File::from(fd);
                raw.write_all(&frame(b"after")).unwrap();
            }
            let (first, second) = reader.join().unwrap();
            assert_eq!(first.unwrap(), big, "travel: {travel}");
            assert_eq!(second.unwrap(), b"after", "travel: {travel}");
        }
    });
}

/// A connection whose part-sent rest finds no room within its bound does not travel (the peer
/// may be read by this very thread later): an error that says so, not a hang.
#[test]
fn a_connection_whose_part_sent_message_finds_no_room_refuses_to_travel() {
    both_runtimes(|| async {
        let (a, _b, _) = part_sent().await;
        let (c, _d) = multiproc::pipe(true).unwrap();
        let t = std::time::Instant::now();
        let err = c.send(&a).unwrap_err();
        assert!(err.to_string().contains("waits for room"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    });
}

#[test]
fn accept_and_connect_async_run_handshakes_concurrently() {
    both_runtimes(|| async {
        let listener = Listener::builder()
            .authkey(b"secret".to_vec())
            .bind("127.0.0.1:0")
            .unwrap();
        let address = listener.address().clone();
        let clients = async {
            let mut conns = Vec::new();
            for i in 0..8u32 {
                let c = Client::connect_async(&address, Some(b"secret"))
                    .await
                    .unwrap();
                c.send_async(&i).await.unwrap();
                conns.push(c);
            }
            conns
        };
        let server = async {
            let mut got = Vec::new();
            for _ in 0..8 {
                let conn = listener.accept_async().await.unwrap();
                got.push(conn.recv_async::<u32>().await.unwrap());
            }
            got.sort();
            got
        };
        let (_conns, got) = tokio::join!(clients, server);
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        // A wrong key fails that client only.
        let (bad, ok) = tokio::join!(
            Client::connect_async(&address, Some(b"wrong")),
            listener.accept_async()
        );
        assert!(matches!(bad, Err(ConnectionError::AuthenticationFailed(_))));
        assert!(matches!(ok, Err(ConnectionError::AuthenticationFailed(_))));
        // No key on either side: the OS's accept.
        let plain = Listener::bind("127.0.0.1:0", None).unwrap();
        let (c, s) = tokio::join!(
            Client::connect_async(plain.address(), None),
            plain.accept_async()
        );
        c.unwrap().send_async(&5u8).await.unwrap();
        assert_eq!(s.unwrap().recv_async::<u8>().await.unwrap(), 5);
    });
}

#[test]
fn a_silent_server_times_the_async_handshake_out() {
    both_runtimes(|| async {
        let silent = Listener::bind("127.0.0.1:0", None).unwrap();
        let client = Client::default()
            .authkey(b"k".to_vec())
            .handshake_timeout(Duration::from_millis(100));
        let r = client.open_async(silent.address()).await;
        assert!(
            matches!(r, Err(ConnectionError::HandshakeTimeout { .. })),
            "{r:?}"
        );
    });
}

#[test]
fn a_runtime_without_its_io_driver_is_an_error_not_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (a, b) = multiproc::pipe(true).unwrap();
    let got = rt.block_on(async { b.recv_bytes_async().await });
    let err = got.unwrap_err();
    assert!(err.to_string().contains("enable_io"), "{err}");
    // The connection is still usable the plain way.
    a.send_bytes(b"after").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"after");
}
