//! Reading: one complete frame off the front of a read buffer, checked against RFC 6455
//! section 5.2 (reserved bits and opcodes, masking by role, minimal lengths, control frame
//! limits) and against the size limit before its payload is buffered.

use super::mask::apply_mask;
use super::{close_code, Frame, FrameError, OpCode, Role, RSV1};
use bytes::{Buf, BytesMut};

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more bytes are
/// needed (nothing is consumed then). A frame whose payload exceeds `max_payload` is refused as
/// soon as its header is read (close 1009), before its payload is buffered.
pub fn parse_frame(
    buf: &mut BytesMut,
    role: Role,
    max_payload: usize,
) -> Result<Option<Frame>, FrameError> {
    parse_frame_ext(buf, role, max_payload, false)
}

/// [`parse_frame`] on a connection that negotiated permessage-deflate (`rsv1_allowed`): RSV1
/// is then read into [`Frame::rsv1`] instead of refused; RSV2 and RSV3 stay errors.
pub fn parse_frame_ext(
    buf: &mut BytesMut,
    role: Role,
    max_payload: usize,
    rsv1_allowed: bool,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & RSV1 != 0;
    let reserved = if rsv1_allowed { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(FrameError::new(
            close_code::PROTOCOL,
            "reserved bits set without an extension",
        ));
    }
    let opcode = OpCode::from_u8(b0 & 0x0F)
        .ok_or(FrameError::new(close_code::PROTOCOL, "reserved opcode"))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "client frame is not masked",
            ))
        }
        (Role::Client, true) => {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "server frame is masked",
            ))
        }
        _ => {}
    }
    let (len, mut header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if len < 126 {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "length not minimally encoded",
                ));
            }
            (len, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().unwrap());
            if len >> 63 != 0 {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "64-bit length has its top bit set",
                ));
            }
            if len <= u16::MAX as u64 {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "length not minimally encoded",
                ));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "fragmented control frame",
            ));
        }
        if len > 125 {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "control frame over 125 bytes",
            ));
        }
    }
    if len > max_payload as u64 {
        return Err(FrameError::new(
            close_code::TOO_BIG,
            "frame exceeds the size limit",
        ));
    }
    let len = len as usize;
    let mask = if masked {
        if buf.len() < header + 4 {
            return Ok(None);
        }
        let m = [
            buf[header],
            buf[header + 1],
            buf[header + 2],
            buf[header + 3],
        ];
        header += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < header + len {
        // Make room for the rest of the frame in one allocation instead of doubling.
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    let mut payload = buf.split_to(len);
    if let Some(mask) = mask {
        apply_mask(&mut payload, mask);
    }
    Ok(Some(Frame {
        fin,
        rsv1,
        opcode,
        payload,
    }))
}
