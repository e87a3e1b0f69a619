//! Free loopback ports for services a test starts and addresses a test hands out.
//!
//! Asking the kernel for port 0 and closing the listener is not enough when the port is given to
//! another process to bind later: the kernel hands the same range out as the source port of every
//! outgoing connection, and a test stack opens hundreds of them (Kafka clients, HTTP clients,
//! Prometheus scrapes). One of them landing on the port between the check and the bind stops the
//! service with "address already in use". Ports here come from below the ephemeral range, which
//! connections never take on their own, and a process never hands out the same one twice.

use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where Linux starts handing out source ports unless configured otherwise.
const DEFAULT_EPHEMERAL: Range<u16> = 32768..61000;
/// Below this live the well-known ports and the native stack's own (Kafka, RGW, Prometheus).
const LOWEST: u16 = 10_000;

/// A loopback address nothing listens on now and no outgoing connection will take: bind it.
///
/// Panics when every candidate port is taken; a machine in that state cannot run the tests.
pub fn free_port() -> SocketAddr {
    let range = assignable_ports(ephemeral_range());
    let width = u32::from(range.end - range.start);
    if width == 0 {
        return kernel_chosen_port();
    }
    for _ in 0..width {
        let port = range.start + (next_offset() % width) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener
                .local_addr()
                .expect("a bound listener has an address");
        }
    }
    panic!("no free loopback port in {range:?}");
}

/// The ports to hand out: those between the well-known ones and the ephemeral range, or above
/// the ephemeral range when it starts too low to leave room below it.
fn assignable_ports(ephemeral: Range<u16>) -> Range<u16> {
    const ENOUGH: u16 = 1_000;
    if ephemeral.start >= LOWEST + ENOUGH {
        LOWEST..ephemeral.start
    } else if ephemeral.end <= u16::MAX - ENOUGH {
        ephemeral.end..u16::MAX
    } else {
        0..0
    }
}

/// The kernel's ephemeral range (`ip_local_port_range`, inclusive bounds), or Linux's default.
fn ephemeral_range() -> Range<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn parse_port_range(text: &str) -> Option<Range<u16>> {
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    let low = bounds.next()?.ok()?;
    let high = bounds.next()?.ok()?;
    (low <= high).then(|| low..high.saturating_add(1))
}

/// Walks the range from a start of this process's own, so two test processes rarely try the
/// same ports and one process never returns to a port it handed out until it has tried all.
fn next_offset() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        nanos ^ std::process::id().wrapping_mul(2_654_435_761)
    });
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

fn kernel_chosen_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_s_range_is_read_with_inclusive_bounds() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..61000));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..u16::MAX));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("many ports"), None);
    }

    #[test]
    fn ports_come_from_outside_the_ephemeral_range() {
        assert_eq!(assignable_ports(32768..61000), LOWEST..32768);
        assert_eq!(assignable_ports(1024..40000), 40000..u16::MAX);
        assert_eq!(assignable_ports(1024..u16::MAX), 0..0);
    }

    #[test]
    fn a_process_does_not_hand_out_a_port_twice_in_a_row() {
        let ephemeral = ephemeral_range();
        let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port().port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(
            ports.iter().all(|port| !ephemeral.contains(port)),
            "{ports:?}"
        );
    }
}
