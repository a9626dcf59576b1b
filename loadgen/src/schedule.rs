//! The open model. Every sender has a fixed schedule: message `k` is *intended* to leave at
//! `phase + k * interval` after the common start, whatever the server does. Latencies are
//! measured from that intended time (as wrk2 does), so when the server or the load generator
//! stalls, every message that should have gone out during the stall carries the stall in its
//! latency: no coordinated omission.
//!
//! The intended time travels in the message's `cid` (`<role>-<k>-<intended ns>`), so any
//! receiver, and the ack, can be attributed to it without a lookup table.

use bytes::{BufMut, BytesMut};

/// One sender's schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Nanoseconds between two messages.
    pub interval_ns: f64,
    /// Offset of message 0, spreading the senders of a share evenly over one interval.
    pub phase_ns: u64,
    /// Messages in the whole run (warm-up included).
    pub count: u64,
    /// Share of messages sent as direct messages.
    pub dm_share: f64,
}

impl Schedule {
    /// `rate` messages/s for `secs` seconds; this sender is `slot` of `slots` in its share.
    ///
    /// The count depends only on `rate` and `secs`, never on the slot, so a run split over any
    /// number of agents sends exactly the same number of messages.
    pub fn new(rate: f64, secs: f64, slot: usize, slots: usize, dm_share: f64) -> Schedule {
        let interval_ns = 1e9 / rate;
        Schedule {
            interval_ns,
            phase_ns: (interval_ns * slot as f64 / slots.max(1) as f64) as u64,
            count: (rate * secs).round() as u64,
            dm_share,
        }
    }

    /// Intended send time of message `k`, in ns after the start.
    #[inline]
    pub fn intended(&self, k: u64) -> u64 {
        self.phase_ns + (k as f64 * self.interval_ns) as u64
    }

    /// Whether message `k` is a direct message: spread evenly, `dm_share` of them, the same
    /// choice on every run.
    #[inline]
    pub fn is_dm(&self, k: u64) -> bool {
        self.dm_share > 0.0
            && ((k + 1) as f64 * self.dm_share).floor() > (k as f64 * self.dm_share).floor()
    }
}

/// Appends `<role>-<k>-<intended>` (no allocation).
#[inline]
pub fn write_cid(out: &mut BytesMut, role: u32, k: u64, intended_ns: u64) {
    let mut b = itoa_buf();
    out.put_slice(fmt_u64(&mut b, role as u64));
    out.put_u8(b'-');
    out.put_slice(fmt_u64(&mut b, k));
    out.put_u8(b'-');
    out.put_slice(fmt_u64(&mut b, intended_ns));
}

/// `(role, k, intended ns)` from a cid written by [`write_cid`].
#[inline]
pub fn parse_cid(cid: &[u8]) -> Option<(u32, u64, u64)> {
    let mut parts = cid.split(|&b| b == b'-');
    let role = parse_u64(parts.next()?)?;
    let k = parse_u64(parts.next()?)?;
    let t = parse_u64(parts.next()?)?;
    if parts.next().is_some() || role > u32::MAX as u64 {
        return None;
    }
    Some((role as u32, k, t))
}

/// Decimal digits only, at least one, no overflow.
#[inline]
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_does_not_depend_on_the_slot() {
        for slots in [1, 3, 7] {
            for slot in 0..slots {
                let s = Schedule::new(50.0, 3.0, slot, slots, 0.0);
                assert_eq!(s.count, 150);
                assert!(s.intended(s.count - 1) < 3_000_000_000);
                assert!(s.intended(1) - s.intended(0) == 20_000_000);
            }
        }
    }

    #[test]
    fn dm_share_is_spread_exactly() {
        let s = Schedule::new(100.0, 10.0, 0, 1, 0.1);
        let dms = (0..s.count).filter(|&k| s.is_dm(k)).count();
        assert_eq!(dms, 100);
        let none = Schedule::new(100.0, 10.0, 0, 1, 0.0);
        assert!((0..none.count).all(|k| !none.is_dm(k)));
        let all = Schedule::new(100.0, 1.0, 0, 1, 1.0);
        assert!((0..all.count).all(|k| all.is_dm(k)));
    }

    #[test]
    fn cid_round_trip() {
        let mut b = BytesMut::new();
        write_cid(&mut b, 12, 0, 1_234_567_890_123);
        assert_eq!(&b[..], b"12-0-1234567890123");
        assert_eq!(parse_cid(&b), Some((12, 0, 1_234_567_890_123)));
        assert_eq!(parse_cid(b"1-2"), None);
        assert_eq!(parse_cid(b"1-2-x"), None);
        assert_eq!(parse_cid(b"1-2-3-4"), None);
    }
}
