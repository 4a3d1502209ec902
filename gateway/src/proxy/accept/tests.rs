use std::io;
use std::time::Duration;

use super::{bind, is_fd_exhaustion, Accepted, Acceptor, Backoff};

#[test]
fn backoff_doubles_to_a_second_and_resets() {
    let mut b = Backoff::new();
    let waits: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
    assert_eq!(waits[0], Duration::from_millis(5));
    assert_eq!(waits[1], Duration::from_millis(10));
    assert_eq!(waits[7], Duration::from_millis(640));
    assert_eq!(waits[8], Duration::from_secs(1));
    assert_eq!(waits[9], Duration::from_secs(1));
    b.reset();
    assert_eq!(b.next_wait(), Duration::from_millis(5));
}

#[test]
fn only_emfile_and_enfile_are_descriptor_exhaustion() {
    assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
        libc::EMFILE
    )));
    assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
        libc::ENFILE
    )));
    assert!(!is_fd_exhaustion(&io::Error::from_raw_os_error(
        libc::ECONNREFUSED
    )));
    assert!(!is_fd_exhaustion(&io::Error::other("Too many open files")));
}

#[tokio::test]
async fn binds_v4_and_v6_and_accepts() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let Ok(listener) = bind(addr.parse().unwrap(), 16) else {
            assert!(addr.starts_with('['), "{addr} must bind");
            continue; // no IPv6 loopback in this sandbox
        };
        let mut acceptor = Acceptor::new(listener);
        let to = acceptor.local_addr();
        let client = tokio::net::TcpStream::connect(to).await.unwrap();
        match acceptor.accept().await {
            Accepted::Conn(_, peer) => assert_eq!(peer, client.local_addr().unwrap()),
            Accepted::Shed { .. } => panic!("nothing to shed"),
        }
    }
}

#[tokio::test]
async fn rebinds_a_port_with_connections_in_time_wait() {
    let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    // The server side closes first, so it is the side left in TIME_WAIT.
    drop(server);
    drop(listener);
    drop(client);
    bind(addr, 16).expect("SO_REUSEADDR rebinds at once");
}
