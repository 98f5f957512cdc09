//! MIME downgrade for a next hop without `8BITMIME` (RFC 6152 §3): every leaf part whose body
//! has 8-bit octets and is not already base64 or quoted-printable is re-encoded as base64; the
//! rest of the message is copied byte for byte. Header sections with raw 8-bit text cannot be
//! downgraded losslessly and are refused.

use std::borrow::Cow;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders, PartType};

use crate::header;

/// Why a message cannot be made 7-bit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DowngradeError {
    #[error("8-bit octets in a header section")]
    EightBitHeader,
    #[error("8-bit octets in an embedded message (message/* cannot be base64-encoded)")]
    EmbeddedMessage,
    #[error("not a MIME message")]
    NotMime,
}

fn is_8bit(b: &[u8]) -> bool {
    b.iter().any(|&x| x >= 0x80)
}

/// Rewrites a header block (fields and the blank line) with `Content-Transfer-Encoding: base64`.
fn rewrite_header(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 40);
    if let Ok(split) = header::split(block) {
        for f in split.fields {
            if f.is("Content-Transfer-Encoding") {
                continue;
            }
            out.extend_from_slice(f.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(f.raw_value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
    out
}

fn base64_lines(body: &[u8]) -> Vec<u8> {
    let enc = base64::engine::general_purpose::STANDARD.encode(body);
    let mut out = Vec::with_capacity(enc.len() + enc.len() / 38);
    for (i, chunk) in enc.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// Parses a whole mail with mail-parser, containing its panics: mail-parser 0.11 has debug-only
/// assertions that malformed input can trip (a multipart whose first delimiter line carries
/// text after the boundary; fixed in 1.0, which needs a newer compiler than ours). In release
/// builds they compile away; in debug builds the input is simply not MIME to us. Bytes from a
/// peer must never stop the relay.
pub(crate) fn parse_mime(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten()
}

/// The message with every 8-bit leaf part as base64 (unchanged when already 7-bit).
pub fn downgrade_8bit(raw: &[u8]) -> Result<Cow<'_, [u8]>, DowngradeError> {
    if !is_8bit(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let msg = parse_mime(raw).ok_or(DowngradeError::NotMime)?;
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (header, body, end)
    for (i, p) in msg.parts.iter().enumerate() {
        let (h, b, e) = (
            p.offset_header as usize,
            p.offset_body as usize,
            p.offset_end as usize,
        );
        if h > b || b > e || e > raw.len() {
            return Err(DowngradeError::NotMime);
        }
        if is_8bit(&raw[h..b]) {
            return Err(DowngradeError::EightBitHeader);
        }
        let leaf = match &p.body {
            PartType::Multipart(_) => false,
            PartType::Message(_) => {
                if is_8bit(&raw[b..e]) {
                    return Err(DowngradeError::EmbeddedMessage);
                }
                false
            }
            _ => true,
        };
        if !leaf || !is_8bit(&raw[b..e]) {
            continue;
        }
        let cte = p
            .content_transfer_encoding()
            .unwrap_or("")
            .to_ascii_lowercase();
        if cte == "base64" || cte == "quoted-printable" {
            continue;
        }
        // The root of a single-part message ends at the end of the mail; a child part ends
        // before the CRLF of the next delimiter.
        let _ = i;
        spans.push((h, b, e));
    }
    // Preamble/epilogue text of multiparts with 8-bit octets is not a part: refuse, rather
    // than send 8-bit to a 7-bit hop.
    let mut out = Vec::with_capacity(raw.len() * 4 / 3 + 256);
    let mut cursor = 0;
    spans.sort_unstable();
    for (h, b, e) in spans {
        if h < cursor {
            continue;
        }
        out.extend_from_slice(&raw[cursor..h]);
        out.extend_from_slice(&rewrite_header(&raw[h..b]));
        out.extend_from_slice(&base64_lines(&raw[b..e]));
        if e == raw.len() {
            out.extend_from_slice(b"\r\n");
        }
        cursor = e;
    }
    out.extend_from_slice(&raw[cursor..]);
    if is_8bit(&out) {
        return Err(DowngradeError::EightBitHeader);
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_parts_become_base64_and_decode_to_the_same_octets() {
        let raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\nline2\r\n--b\r\nContent-Type: text/plain\r\n\r\nascii\r\n--b--\r\n";
        let out = downgrade_8bit(raw).unwrap();
        assert!(!is_8bit(&out));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.contains(
                "Content-Transfer-Encoding: base64\r\n\r\nR3LDvMOfZQ0KbGluZTI=\r\n--b\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("8bit"));
        assert!(
            text.contains("\r\nascii\r\n--b--\r\n"),
            "untouched parts stay byte for byte"
        );
        let parsed = MessageParser::default().parse(out.as_ref()).unwrap();
        assert_eq!(parsed.parts[1].contents(), "Grüße\r\nline2".as_bytes());
    }

    #[test]
    fn single_part_and_seven_bit_and_refusals() {
        let raw = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\r\n";
        let out = downgrade_8bit(raw).unwrap();
        assert!(!is_8bit(&out));
        assert!(
            out.ends_with(b"\r\n\r\nR3LDvA0K\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let ascii = b"Subject: x\r\n\r\nplain\r\n";
        assert!(matches!(downgrade_8bit(ascii).unwrap(), Cow::Borrowed(_)));
        let bad = b"Subject: Gr\xc3\xbc\r\n\r\nx\r\n";
        assert_eq!(
            downgrade_8bit(bad).unwrap_err(),
            DowngradeError::EightBitHeader
        );
    }
}
