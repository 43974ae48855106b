//! The entry point of a local manager's server process.
// `#[multiproc::func]` registers the function with a link-section static (linkme); that
// attribute is all the unsafe code here.
#![allow(unsafe_code)]

use super::server::Server;
use crate::connection::{Address, Connection, Listener};

/// The server of a local manager: a daemon child process serving on the listening socket
/// its owner created, until the owner shuts it down or dies. `owner` are the owner's first
/// connections (socketpair ends, trusted without a handshake) in client session `session`.
#[multiproc_macros::func]
pub(crate) fn multiproc_manager_server(
    listener: crate::codec::Fd,
    address: String,
    authkey: serde_bytes::ByteBuf,
    owner: Vec<Connection>,
    session: u128,
) -> Result<(), String> {
    let address: Address = address.parse().map_err(|e| format!("{e}"))?;
    let listener = Listener::from_listening(listener.into_owned(), address, authkey.into_vec());
    let server = Server::start(listener).map_err(|e| e.to_string())?;
    server.adopt(owner, session);
    server.wait();
    Ok(())
}
