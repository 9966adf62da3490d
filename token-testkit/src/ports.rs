//! Free loopback ports.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// Ports never handed out: a system Redis and its cluster bus.
const RESERVED: [u16; 2] = [6379, 16379];

/// A port on 127.0.0.1 where nothing listens (the OS's choice, never
/// 6379). Someone else may take it before the caller binds it; the
/// launchers here retry.
///
/// # Panics
///
/// When the OS has no free loopback port.
pub fn free_port() -> u16 {
    free_port_with_bus(None).expect("a free loopback port")
}

/// A free loopback port and, when `bus` is given, `port + bus` free as well
/// (a Redis Cluster node's bus port).
pub(crate) fn free_port_with_bus(bus: Option<u16>) -> io::Result<u16> {
    for _ in 0..200 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if RESERVED.contains(&port) {
            continue;
        }
        match bus {
            None => return Ok(port),
            Some(offset) => {
                let Some(b) = port.checked_add(offset) else {
                    continue;
                };
                if !RESERVED.contains(&b) && TcpListener::bind((Ipv4Addr::LOCALHOST, b)).is_ok() {
                    return Ok(port);
                }
            }
        }
    }
    Err(io::Error::other("no free loopback port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound_and_is_never_redis_default() {
        let port = free_port();
        assert!(!RESERVED.contains(&port));
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
