//! Addresses of listeners: TCP, Unix socket paths, Linux abstract sockets.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::ConnectionError;
use crate::sys::SockTarget;

/// Where a [`Listener`](super::Listener) listens and a [`Client`](super::Client) connects.
///
/// Parsed from a string: `HOST:PORT` (or `[IPv6]:PORT`) is TCP, `@name` is a Linux abstract
/// Unix socket, anything else is a Unix socket path.
///
/// ```
/// use multiproc::Address;
/// assert!(matches!("127.0.0.1:5000".parse::<Address>()?, Address::Tcp(_)));
/// assert!(matches!("[::1]:5000".parse::<Address>()?, Address::Tcp(_)));
/// assert!(matches!("/tmp/app.sock".parse::<Address>()?, Address::Unix(_)));
/// assert!(matches!("@app".parse::<Address>()?, Address::Abstract(_)));
/// # Ok::<(), multiproc::ConnectionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// TCP over IPv4 or IPv6.
    Tcp(SocketAddr),
    /// A Unix socket at a filesystem path.
    Unix(PathBuf),
    /// A Linux abstract Unix socket: a name with no filesystem entry.
    Abstract(Vec<u8>),
}

impl Address {
    pub(crate) fn target(&self) -> SockTarget<'_> {
        match self {
            Address::Tcp(a) => SockTarget::Tcp(*a),
            Address::Unix(p) => SockTarget::Path(p),
            Address::Abstract(n) => SockTarget::Abstract(n),
        }
    }
}

impl FromStr for Address {
    type Err = ConnectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ConnectionError::BadAddress(s.into()));
        }
        if let Some(name) = s.strip_prefix('@').or_else(|| s.strip_prefix('\0')) {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if s.contains('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(a));
        }
        if let Some((host, port)) = s.rsplit_once(':')
            && !host.is_empty()
            && port.parse::<u16>().is_ok()
        {
            return s
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .map(Address::Tcp)
                .ok_or_else(|| ConnectionError::BadAddress(s.into()));
        }
        Ok(Address::Unix(PathBuf::from(s)))
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Self {
        Address::Unix(p)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// Anything that names an address: an [`Address`], a string to parse, a `SocketAddr`.
pub trait ToAddress {
    /// The address, or why the string is not one.
    fn to_address(&self) -> Result<Address, ConnectionError>;
}

impl ToAddress for Address {
    fn to_address(&self) -> Result<Address, ConnectionError> {
        Ok(self.clone())
    }
}

impl ToAddress for str {
    fn to_address(&self) -> Result<Address, ConnectionError> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(&self) -> Result<Address, ConnectionError> {
        self.parse()
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> Result<Address, ConnectionError> {
        Ok(Address::Tcp(*self))
    }
}

impl<T: ToAddress + ?Sized> ToAddress for &T {
    fn to_address(&self) -> Result<Address, ConnectionError> {
        (**self).to_address()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(
            "127.0.0.1:80".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert!(
            matches!("localhost:80".parse::<Address>().unwrap(), Address::Tcp(a) if a.port() == 80)
        );
        assert_eq!(
            "@x".parse::<Address>().unwrap(),
            Address::Abstract(b"x".to_vec())
        );
        assert_eq!(
            "sock".parse::<Address>().unwrap(),
            Address::Unix("sock".into())
        );
        assert_eq!(
            "./a:1".parse::<Address>().unwrap(),
            Address::Unix("./a:1".into())
        );
        assert!("".parse::<Address>().is_err());
        assert_eq!("@x".parse::<Address>().unwrap().to_string(), "@x");
    }
}
