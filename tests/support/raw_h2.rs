//! A raw h2c client for requests no HTTP/2 library sends: header blocks written by hand
//! (literal fields, raw bytes, no Huffman), split into HEADERS and CONTINUATION frames, and the
//! response's status read back from the frames.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Tandem, DEADLINE};

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// HTTP/2's PROTOCOL_ERROR code.
pub const PROTOCOL_ERROR: u32 = 1;

/// The largest frame payload a peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;

/// How tandem answered one stream.
#[derive(Debug, PartialEq)]
pub enum H2Outcome {
    /// A response with this status (0 when its encoding was not understood) and body.
    Answered(u16, String),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code (the whole connection).
    GoAway(u32),
    /// The connection closed without a word.
    Closed,
}

/// An HPACK integer with a `prefix`-bit prefix, its first byte or-ed with `flags`.
pub fn hpack_integer(value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let limit = (1usize << prefix) - 1;
    if value < limit {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | limit as u8);
    let mut rest = value - limit;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literal fields without indexing, names and values as given.
pub fn hpack(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_integer(name.len(), 7, 0, &mut block);
        block.extend_from_slice(name);
        hpack_integer(value.len(), 7, 0, &mut block);
        block.extend_from_slice(value);
    }
    block
}

/// Sends one request (`block` as HEADERS and CONTINUATION frames, END_STREAM set) on a fresh
/// h2c connection to `tandem`, and reads how stream 1 was answered.
pub async fn h2_exchange(tandem: &Tandem, block: &[u8]) -> H2Outcome {
    let mut stream = TcpStream::connect(tandem.address).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let pieces: Vec<&[u8]> = if block.is_empty() {
        vec![&[]]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    for (at, piece) in pieces.iter().enumerate() {
        let last = if at + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        if at == 0 {
            frame(&mut out, HEADERS, END_STREAM | last, 1, piece);
        } else {
            frame(&mut out, CONTINUATION, last, 1, piece);
        }
    }
    // tandem may refuse and close before it has read everything.
    let _ = stream.write_all(&out).await;
    outcome(&mut stream).await
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

async fn read_frame(stream: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload).await.ok()?;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], id, payload))
}

/// Reads until stream 1 is answered whole, reset, or the connection ends; acknowledges the
/// server's SETTINGS and PINGs meanwhile.
async fn outcome(stream: &mut TcpStream) -> H2Outcome {
    let until = Instant::now() + DEADLINE;
    let mut status = None;
    let mut body = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(read) = tokio::time::timeout(left, read_frame(stream)).await else {
            panic!("no answer on stream 1 in time");
        };
        let answered = |status: Option<u16>, body: &[u8]| {
            status.map(|s| H2Outcome::Answered(s, String::from_utf8_lossy(body).into_owned()))
        };
        let Some((kind, flags, id, payload)) = read else {
            return answered(status, &body).unwrap_or(H2Outcome::Closed);
        };
        let mut reply = Vec::new();
        match kind {
            SETTINGS if flags & 1 == 0 => frame(&mut reply, SETTINGS, 1, 0, &[]),
            PING if flags & 1 == 0 => frame(&mut reply, PING, 1, 0, &payload),
            GOAWAY => {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                return answered(status, &body).unwrap_or(H2Outcome::GoAway(code));
            }
            RST_STREAM if id == 1 => {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                return answered(status, &body).unwrap_or(H2Outcome::Reset(code));
            }
            HEADERS if id == 1 => {
                status = Some(response_status(&payload));
                if flags & END_STREAM != 0 {
                    return answered(status, &body).unwrap();
                }
            }
            DATA if id == 1 => {
                body.extend_from_slice(&payload);
                if flags & END_STREAM != 0 {
                    if let Some(done) = answered(status, &body) {
                        return done;
                    }
                }
            }
            _ => {}
        }
        if !reply.is_empty() {
            let _ = stream.write_all(&reply).await;
        }
    }
}

/// The `:status` of the first response on a connection (empty dynamic table): an indexed
/// static entry, or a literal with `:status`'s name index, plain or Huffman-coded (digits
/// only). 0 for anything else.
fn response_status(block: &[u8]) -> u16 {
    let static_status = |index: u8| match index {
        8 => 200,
        9 => 204,
        10 => 206,
        11 => 304,
        12 => 400,
        13 => 404,
        14 => 500,
        _ => 0,
    };
    let Some(&first) = block.first() else {
        return 0;
    };
    if first & 0x80 != 0 {
        return static_status(first & 0x7f);
    }
    // Literal with incremental indexing (01xxxxxx), without (0000xxxx) or never (0001xxxx)
    // indexed, name index 8 (`:status`).
    if first != 0x48 && first != 0x08 && first != 0x18 {
        return 0;
    }
    let Some(&length) = block.get(1) else {
        return 0;
    };
    let value = &block[2..(2 + (length & 0x7f) as usize).min(block.len())];
    let text = if length & 0x80 == 0 {
        String::from_utf8_lossy(value).into_owned()
    } else {
        huffman_digits(value)
    };
    text.parse().unwrap_or(0)
}

/// Decodes a Huffman-coded string of ASCII digits (RFC 7541 Appendix B: `0`-`2` are 5-bit
/// codes 00000-00010, `3`-`9` 6-bit codes 011001-011111).
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let code = |from: usize, width: usize| {
        bits.get(from..from + width)
            .map(|b| b.iter().fold(0u8, |v, &bit| v << 1 | bit))
    };
    let mut text = String::new();
    let mut at = 0;
    while at + 5 <= bits.len() {
        match code(at, 5) {
            Some(five @ 0..=2) => {
                text.push(char::from(b'0' + five));
                at += 5;
            }
            _ => match code(at, 6) {
                Some(six @ 0b011001..=0b011111) => {
                    text.push(char::from(b'3' + (six - 0b011001)));
                    at += 6;
                }
                // The padding (a prefix of the all-ones EOS code) or something else.
                _ => break,
            },
        }
    }
    text
}
